/**
 * A faster merge loop for the @huggingface/tokenizers BPE model, the same merges in the same order.
 *
 * The library's `bpe(word)` looks up every candidate pair's rank with `JSON.stringify([a, b])` and clones
 * a node object per merge; a SentencePiece-style tokenizer (Llama 2's: no pre-tokenizer) hands it the whole
 * normalized text as one word, so encoding ran at ~25k tokens/s (~0.1 MB/s) on one core, hours for the
 * billions of tokens a recovery fine-tune reads. This one keeps the symbols in typed arrays and the
 * candidate pairs in a binary heap of (rank, position): the lowest rank merges first and, among equal ranks,
 * the leftmost, as the library's score (rank + position / length) orders them and as the Rust tokenizers do;
 * a pair whose symbols have changed since it was pushed is skipped when it comes up (a version per symbol).
 * Everything around the loop (the cache, end-of-word and continuing-subword suffixes, byte fallback, the
 * vocabulary lookup) stays the library's.
 */

/** The library's BPE model as far as this file reads it (it exports no types for it). */
interface LibraryBpe {
  merges: [string, string][];
  cache: { get(key: string): string[] | undefined; put(key: string, value: string[]): void };
  end_of_word_suffix?: string | null;
  continuing_subword_suffix?: string | null;
  max_length_to_cache: number;
  bpe(word: string): string[];
}

/** Joins a pair's two strings into its rank key: U+0000 appears in no vocabulary string (checked). */
const SEP = "\u0000";

/**
 * Replaces `model.bpe` with the merge loop above when `model` is the library's BPE model and no merge
 * string holds U+0000; returns whether it did (otherwise the library's own loop stays).
 */
export function useFastBpe(model: unknown): boolean {
  const m = model as Partial<LibraryBpe> | null;
  if (!m || typeof m.bpe !== "function" || !Array.isArray(m.merges) || !m.cache || typeof m.max_length_to_cache !== "number") return false;
  const ranks = new Map<string, number>();
  for (let i = 0; i < m.merges.length; i++) {
    const pair = m.merges[i]!;
    if (!Array.isArray(pair) || pair.length !== 2 || pair[0].includes(SEP) || pair[1].includes(SEP)) return false;
    // A merge listed twice takes its last rank, as the library's Map, built in order, keeps it.
    ranks.set(pair[0] + SEP + pair[1], i);
  }
  const lib = m as LibraryBpe;
  lib.bpe = (word: string): string[] => {
    if (word.length === 0) return [];
    const cached = lib.cache.get(word);
    if (cached !== undefined) return cached;
    const symbols = Array.from(word);
    if (lib.end_of_word_suffix) symbols[symbols.length - 1] += lib.end_of_word_suffix;
    const out = symbols.length > 1 ? merge(symbols, ranks) : symbols;
    if (lib.continuing_subword_suffix) for (let i = 0; i < out.length - 1; i++) out[i] += lib.continuing_subword_suffix;
    if (word.length < lib.max_length_to_cache) lib.cache.put(word, out);
    return out;
  };
  return true;
}

/** The merged symbols of `sym` (one string per character to start; merged in place). */
function merge(sym: string[], ranks: Map<string, number>): string[] {
  const n = sym.length;
  const next = new Int32Array(n), prev = new Int32Array(n), version = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  const heap = new PairHeap(n);
  const push = (i: number) => {
    const j = next[i]!;
    if (j < 0) return;
    const rank = ranks.get(sym[i]! + SEP + sym[j]!);
    if (rank !== undefined) heap.push(rank, i, version[i]!, version[j]!);
  };
  for (let i = 0; i + 1 < n; i++) push(i);
  while (heap.size > 0) {
    const { left: i, leftVersion, rightVersion } = heap.pop();
    const j = next[i]!;
    // Stale: the left symbol was merged away or changed, or its right neighbour is another symbol now.
    if (version[i] !== leftVersion || j < 0 || version[j] !== rightVersion) continue;
    sym[i] = sym[i]! + sym[j]!;
    version[i]!++;
    // j leaves the list; its version changes so pairs pushed with it as either side are stale.
    version[j]!++;
    const k = next[j]!;
    next[i] = k;
    if (k >= 0) prev[k] = i;
    if (prev[i]! >= 0) push(prev[i]!);
    push(i);
  }
  const out: string[] = [];
  for (let i = 0; i >= 0; i = next[i]!) out.push(sym[i]!);
  return out;
}

/** A binary min-heap of pairs ordered by (rank, left position), each with its two symbols' versions. */
class PairHeap {
  private rank: Int32Array;
  private left: Int32Array;
  private lv: Int32Array;
  private rv: Int32Array;
  size = 0;
  constructor(capacity: number) {
    const c = Math.max(16, capacity);
    this.rank = new Int32Array(c);
    this.left = new Int32Array(c);
    this.lv = new Int32Array(c);
    this.rv = new Int32Array(c);
  }

  private less(a: number, b: number): boolean {
    return this.rank[a]! < this.rank[b]! || (this.rank[a] === this.rank[b] && this.left[a]! < this.left[b]!);
  }

  private swap(a: number, b: number): void {
    for (const arr of [this.rank, this.left, this.lv, this.rv]) {
      const t = arr[a]!;
      arr[a] = arr[b]!;
      arr[b] = t;
    }
  }

  push(rank: number, left: number, leftVersion: number, rightVersion: number): void {
    if (this.size === this.rank.length) this.grow();
    let i = this.size++;
    this.rank[i] = rank;
    this.left[i] = left;
    this.lv[i] = leftVersion;
    this.rv[i] = rightVersion;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): { left: number; leftVersion: number; rightVersion: number } {
    const top = { left: this.left[0]!, leftVersion: this.lv[0]!, rightVersion: this.rv[0]! };
    const last = --this.size;
    if (last > 0) {
      this.rank[0] = this.rank[last]!;
      this.left[0] = this.left[last]!;
      this.lv[0] = this.lv[last]!;
      this.rv[0] = this.rv[last]!;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < last && this.less(l, m)) m = l;
        if (r < last && this.less(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }

  private grow(): void {
    const c = this.rank.length * 2;
    const more = (a: Int32Array) => {
      const b = new Int32Array(c);
      b.set(a);
      return b;
    };
    this.rank = more(this.rank);
    this.left = more(this.left);
    this.lv = more(this.lv);
    this.rv = more(this.rv);
  }
}
