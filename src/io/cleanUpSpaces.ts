/**
 * transformers' `clean_up_tokenization` (what decode applies when tokenizer_config.json sets
 * clean_up_tokenization_spaces: true, as Llama 3's does): " ." → ".", " n't" → "n't", " ' " → "'", …,
 * and the same applied to a text that arrives in pieces (a stream), giving out only what later pieces
 * cannot change.
 *
 * The rules run one after another over the whole text, each a left-to-right replace of a fixed
 * pattern that starts with a space and drops spaces only. Cut a text in two as A + B: if no stage of A
 * (A after the first k rules) ends with a proper prefix of rule k+1's pattern, no match of any rule
 * crosses the cut, so clean(A + B) = clean(A) + clean(B) whatever B is. Every proper prefix ends in
 * " ", "n", "'", "v" or "r", so a text ending in any other character cuts safely as it is; only such
 * an end (" ", " n", " n'", " '", " 'v", " 'r", after the earlier rules) is held back. One rule can
 * make another's match (" n ' t" → " n't" → "n't"), which is why each stage is checked, not A alone.
 * The test reads A alone, so it can hold back a little more than needed (a run of 3+ spaces, " ' '"),
 * never less; what is held comes out with the next piece that ends otherwise.
 */

/** transformers' rules in its order: the pattern and the indices in it of the spaces it drops. */
const RULES: readonly (readonly [string, readonly number[]])[] = [
  [" .", [0]],
  [" ?", [0]],
  [" !", [0]],
  [" ,", [0]],
  [" ' ", [0, 2]],
  [" n't", [0]],
  [" 'm", [0]],
  [" 's", [0]],
  [" 've", [0]],
  [" 're", [0]],
];

/** The last character of every proper prefix of a pattern: a text ending otherwise cuts safely. */
const PREFIX_ENDS = new Set([" ", "n", "'", "v", "r"]);

/** How far back from the end of the pending text a cut is looked for (a longer unsafe tail waits for more text). */
const CUT_SEARCH = 32;

/**
 * `text` cleaned up, and the indices in `text` of the spaces dropped (ascending). `safe`: also whether
 * no stage of it ends with a proper prefix of the next rule's pattern (it can be followed by anything).
 */
function cleanStages(text: string): { text: string; dropped: number[]; safe: boolean } {
  // The characters kept so far, as indices into `text`.
  let kept = Array.from({ length: text.length }, (_, i) => i);
  let cur = text;
  let safe = true;
  for (const [pattern, drops] of RULES) {
    for (let n = 1; n < pattern.length && safe; n++) if (cur.endsWith(pattern.slice(0, n))) safe = false;
    let at = cur.indexOf(pattern);
    if (at < 0) continue;
    const next: number[] = [];
    let from = 0;
    for (; at >= 0; at = cur.indexOf(pattern, from)) {
      for (let i = from; i < at; i++) next.push(kept[i]!);
      for (let j = 0; j < pattern.length; j++) if (!drops.includes(j)) next.push(kept[at + j]!);
      from = at + pattern.length;
    }
    for (let i = from; i < cur.length; i++) next.push(kept[i]!);
    kept = next;
    cur = kept.map((i) => text[i]).join("");
  }
  const isKept = new Uint8Array(text.length);
  for (const i of kept) isKept[i] = 1;
  const dropped: number[] = [];
  for (let i = 0; i < text.length; i++) if (!isKept[i]) dropped.push(i);
  return { text: cur, dropped, safe };
}

/** `text` as transformers' clean_up_tokenization leaves it. */
export function cleanUpSpaces(text: string): string {
  return cleanStages(text).text;
}

/**
 * Text arriving in pieces, cleaned up (when `enabled`) as the whole text would be: the pieces push()
 * and finish() return add up to cleanUpSpaces(everything pushed). Disabled, text passes unchanged.
 */
export class SpaceCleaner {
  /** Text pushed past the last safe cut: not given out yet. */
  private pending = "";
  /** Characters pushed before `pending` (their cleaned text has been given out). */
  private cut = 0;
  /** Indices (in all text pushed) of the spaces dropped before `cut`, ascending. */
  private readonly dropped: number[] = [];

  constructor(readonly enabled: boolean) {}

  /** Takes the next piece of text; returns the cleaned text that no later piece can change (maybe ""). */
  push(text: string): string {
    if (!this.enabled) {
      this.cut += text.length;
      return text;
    }
    this.pending += text;
    return this.giveUpTo(this.safeCut());
  }

  /** The rest, once no more text comes. */
  finish(): string {
    return this.giveUpTo(this.pending.length);
  }

  /** Characters pushed whose cleaned text is settled (given out): offsetOf reads positions up to here. */
  get settled(): number {
    return this.cut;
  }

  /** Where character `at` of the text pushed (at ≤ settled) begins in the cleaned text: `at` less the spaces dropped before it. */
  offsetOf(at: number): number {
    // Binary search: how many dropped indices are below `at`.
    let lo = 0, hi = this.dropped.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.dropped[mid]! < at) lo = mid + 1;
      else hi = mid;
    }
    return at - lo;
  }

  /** The longest start of `pending` that cuts safely (0: none yet). */
  private safeCut(): number {
    const s = this.pending;
    for (let p = s.length; p > 0 && p >= s.length - CUT_SEARCH; p--) {
      if (s[p - 1] === " ") continue;
      if (!PREFIX_ENDS.has(s[p - 1]!) || cleanStages(s.slice(0, p)).safe) return p;
    }
    return 0;
  }

  private giveUpTo(p: number): string {
    if (p === 0) return "";
    const done = cleanStages(this.pending.slice(0, p));
    for (const d of done.dropped) this.dropped.push(this.cut + d);
    this.cut += p;
    this.pending = this.pending.slice(p);
    return done.text;
  }
}
