/**
 * A faster merge loop for the @huggingface/tokenizers BPE model, the same merges in the same order.
 *
 * The library's `bpe(word)` looks up every candidate pair's rank with `JSON.stringify([a, b])` and clones
 * a node object per merge; a SentencePiece-style tokenizer (Llama 2's: no pre-tokenizer) hands it the whole
 * normalized text as one word, so encoding ran at ~25k tokens/s (~0.1 MB/s) on one core, hours for the
 * billions of tokens a recovery fine-tune reads. This one merges token ids (a pair's rank from a hash
 * table of id pairs, its result from the rank) in typed arrays, with the candidate pairs in a binary heap
 * of (rank, position): the lowest rank merges first and, among equal ranks, the leftmost, as the library's
 * score (rank + position / length) orders them and as the Rust tokenizers do; a pair whose symbols have
 * changed since it was pushed is skipped when it comes up (a version per symbol).
 * Everything around the loop (the cache, end-of-word and continuing-subword suffixes, byte fallback, the
 * vocabulary lookup) stays the library's.
 */

/** The library's BPE model as far as this file reads it (it exports no types for it). */
interface LibraryBpe {
  merges: [string, string][];
  tokens_to_ids: Map<string, number>;
  cache: { get(key: string): string[] | undefined; put(key: string, value: string[]): void };
  end_of_word_suffix?: string | null;
  continuing_subword_suffix?: string | null;
  max_length_to_cache: number;
  bpe(word: string): string[];
}

/**
 * Symbols as numbers: the vocabulary's ids, then ids of our own for strings it lacks (a character outside
 * it, which byte fallback spells out later, or a merge's result it does not list). Merging works on these,
 * so no string is built or hashed per merge; the vocabulary's own strings come back at the end (flat and
 * already hashed, which the library's lookup of each output token then finds at once).
 */
class Symbols {
  private ids: Map<string, number>;
  private extra = new Map<string, number>();
  private strings: string[] = [];
  private extraStrings: string[] = [];
  /** Our ids start here, past any vocabulary id (kept apart so `strings` stays a dense array; below 2^31). */
  private static readonly EXTRA = 1 << 24;
  constructor(vocab: Map<string, number>) {
    this.ids = vocab;
    this.strings = new Array<string>(vocab.size).fill("");
    for (const [s, id] of vocab) this.strings[id] = s;
  }

  id(s: string): number {
    const known = this.ids.get(s) ?? this.extra.get(s);
    if (known !== undefined) return known;
    const id = Symbols.EXTRA + this.extraStrings.length;
    this.extra.set(s, id);
    this.extraStrings.push(s);
    return id;
  }

  string(id: number): string {
    return id >= Symbols.EXTRA ? this.extraStrings[id - Symbols.EXTRA]! : this.strings[id]!;
  }
}

/**
 * Each merge's rank by its pair of ids: an open-addressing table over int arrays (a Map keyed by the pair
 * packed into one number hashes it as a heap double, which took half of the merge loop's time).
 */
class PairRanks {
  private a: Int32Array;
  private b: Int32Array;
  private rank: Int32Array;
  private mask: number;
  constructor(pairs: number) {
    let size = 16;
    while (size < 2 * pairs) size *= 2;
    this.a = new Int32Array(size);
    this.b = new Int32Array(size);
    this.rank = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  private slot(a: number, b: number): number {
    let i = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca6b)) & this.mask;
    while (this.rank[i] !== -1 && (this.a[i] !== a || this.b[i] !== b)) i = (i + 1) & this.mask;
    return i;
  }

  /** Sets the pair's rank (a later merge of the same pair replaces an earlier one). */
  set(a: number, b: number, rank: number): void {
    const i = this.slot(a, b);
    this.a[i] = a;
    this.b[i] = b;
    this.rank[i] = rank;
  }

  /** The pair's rank, −1 for a pair no merge names. */
  get(a: number, b: number): number {
    return this.rank[this.slot(a, b)]!;
  }
}

/**
 * Replaces `model.bpe` with the merge loop above when `model` is the library's BPE model (vocabulary ids
 * below 2^24, fewer than 2^21 merges); returns whether it did (otherwise the library's own loop stays).
 */
export function useFastBpe(model: unknown): boolean {
  const m = model as Partial<LibraryBpe> | null;
  if (!m || typeof m.bpe !== "function" || !Array.isArray(m.merges) || !(m.tokens_to_ids instanceof Map) || !m.cache || typeof m.max_length_to_cache !== "number") return false;
  if (m.merges.length >= 2 ** 21 || [...m.tokens_to_ids.values()].some((id) => !Number.isInteger(id) || id < 0 || id >= 1 << 24)) return false;
  const symbols = new Symbols(m.tokens_to_ids);
  // rank of a pair, and what it merges into; a merge listed twice takes its last rank, as the library's
  // Map, built in order, keeps it.
  const ranks = new PairRanks(m.merges.length);
  const merged: number[] = [];
  for (let r = 0; r < m.merges.length; r++) {
    const pair = m.merges[r]!;
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string" || typeof pair[1] !== "string") return false;
    ranks.set(symbols.id(pair[0]), symbols.id(pair[1]), r);
    merged[r] = symbols.id(pair[0] + pair[1]);
  }
  const lib = m as LibraryBpe;
  lib.bpe = (word: string): string[] => {
    if (word.length === 0) return [];
    const cached = lib.cache.get(word);
    if (cached !== undefined) return cached;
    const chars = Array.from(word);
    if (lib.end_of_word_suffix) chars[chars.length - 1] += lib.end_of_word_suffix;
    const ids = Int32Array.from(chars, (c) => symbols.id(c));
    const out = ids.length > 1 ? merge(ids, ranks, merged).map((id) => symbols.string(id)) : chars;
    if (lib.continuing_subword_suffix) for (let i = 0; i < out.length - 1; i++) out[i] += lib.continuing_subword_suffix;
    if (word.length < lib.max_length_to_cache) lib.cache.put(word, out);
    return out;
  };
  return true;
}

/** The merged symbols of `sym` (one id per character to start; merged in place). */
function merge(sym: Int32Array, ranks: PairRanks, merged: number[]): number[] {
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
    const rank = ranks.get(sym[i]!, sym[j]!);
    if (rank >= 0) heap.push(rank, i, version[i]!, version[j]!);
  };
  for (let i = 0; i + 1 < n; i++) push(i);
  while (heap.size > 0) {
    heap.pop();
    const i = heap.left, j = next[i]!;
    // Stale: the left symbol was merged away or changed, or its right neighbour is another symbol now.
    if (version[i] !== heap.leftVersion || j < 0 || version[j] !== heap.rightVersion) continue;
    sym[i] = merged[heap.rank]!;
    version[i]!++;
    // j leaves the list; its version changes so pairs pushed with it as either side are stale.
    version[j]!++;
    const k = next[j]!;
    next[i] = k;
    if (k >= 0) prev[k] = i;
    if (prev[i]! >= 0) push(prev[i]!);
    push(i);
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]!) out.push(sym[i]!);
  return out;
}

/**
 * A word's positions stay below 2^31 (a JavaScript string holds at most ~2^29 characters) and ranks below
 * 2^21 (useFastBpe declines more merges), so (rank, position) packs into one exact float64.
 */
const POSITIONS = 2 ** 31;

/**
 * A binary min-heap of pairs ordered by (rank, left position), each with its two symbols' versions. pop()
 * leaves the pair in the public fields (no object per pop: a long text pops one per character).
 */
class PairHeap {
  private key: Float64Array;
  private lv: Int32Array;
  private rv: Int32Array;
  size = 0;
  rank = 0;
  left = 0;
  leftVersion = 0;
  rightVersion = 0;
  constructor(capacity: number) {
    const c = Math.max(16, capacity);
    this.key = new Float64Array(c);
    this.lv = new Int32Array(c);
    this.rv = new Int32Array(c);
  }

  push(rank: number, left: number, leftVersion: number, rightVersion: number): void {
    if (this.size === this.key.length) this.grow();
    const key = this.key;
    const k = rank * POSITIONS + left;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (key[p]! <= k) break;
      this.move(i, p);
      i = p;
    }
    this.place(i, k, leftVersion, rightVersion);
  }

  pop(): void {
    const { key, lv, rv } = this;
    const top = key[0]!;
    this.rank = Math.floor(top / POSITIONS);
    this.left = top - this.rank * POSITIONS;
    this.leftVersion = lv[0]!;
    this.rightVersion = rv[0]!;
    const last = --this.size;
    if (last === 0) return;
    const k = key[last]!, a = lv[last]!, b = rv[last]!;
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= last) break;
      if (c + 1 < last && key[c + 1]! < key[c]!) c++;
      if (key[c]! >= k) break;
      this.move(i, c);
      i = c;
    }
    this.place(i, k, a, b);
  }

  /** Entry `from` copied to slot `to` (a sift's step). */
  private move(to: number, from: number): void {
    this.key[to] = this.key[from]!;
    this.lv[to] = this.lv[from]!;
    this.rv[to] = this.rv[from]!;
  }

  private place(i: number, key: number, leftVersion: number, rightVersion: number): void {
    this.key[i] = key;
    this.lv[i] = leftVersion;
    this.rv[i] = rightVersion;
  }

  private grow(): void {
    const c = this.key.length * 2;
    const key = new Float64Array(c), lv = new Int32Array(c), rv = new Int32Array(c);
    key.set(this.key);
    lv.set(this.lv);
    rv.set(this.rv);
    [this.key, this.lv, this.rv] = [key, lv, rv];
  }
}
