/**
 * transformers' `clean_up_tokenization` (what decode applies when tokenizer_config.json sets
 * clean_up_tokenization_spaces: true, as Llama 3's does): " ." → ".", " n't" → "n't", " ' " → "'", …,
 * and the same applied to a text that arrives in pieces (a stream), giving out only what later pieces
 * cannot change.
 *
 * The rules run one after another over the whole text, each a left-to-right replace of a fixed
 * pattern that starts with a space and drops spaces only: first a space before punctuation (" ." " ?"
 * " !" " ,"), then " ' " (both its spaces), then the space before a contraction (" n't" " 'm" " 's"
 * " 've" " 're"). What follows a text changes what happens to the text only through a match that runs
 * past its end, so only these characters at its end can still change (each read in the text as the
 * rules before that one leave it):
 *  - a trailing space: a piece starting with punctuation drops it, and then a " ' " that ended with
 *    it does not match ("a ' " + "." stays "a '.", "a ' " + "t" is "a't");
 *  - the space of a trailing " " or " '" that no earlier " ' " took: a " ' " across the end drops it,
 *    and then " 'm", …, " n't" can drop a space just before it ("x  " + "' m" → "x'm", "x n " + "' t"
 *    → "xn't");
 *  - the space that begins a trailing proper start of a contraction: " ", " n", " n'", " '", " 'v",
 *    " 'r" (" 'v" is also "  ' v", " ' " having matched).
 * So of a run of spaces at the end at most the last two can still go. Everything before the first
 * character that can still change is given out at once, and the rest is cleaned with what follows:
 * no match crosses that cut. test/io/cleanUpSpaces.test.ts checks both against every short text and
 * continuation.
 */

/** A space before punctuation: transformers' first four rules. */
const PUNCT_RULES = [" .", " ?", " !", " ,"] as const;
/** transformers' fifth rule: both its spaces go. */
const QUOTE_RULE = " ' ";
/** The space before a contraction: transformers' last five rules. */
const CONTRACTION_RULES = [" n't", " 'm", " 's", " 've", " 're"] as const;

/** transformers' rules in its order: the pattern and the indices in it of the spaces it drops. */
const RULES: readonly (readonly [string, readonly number[]])[] = [
  ...PUNCT_RULES.map((p) => [p, [0]] as const),
  [QUOTE_RULE, [0, 2]],
  ...CONTRACTION_RULES.map((p) => [p, [0]] as const),
];
const QUOTE_STEP = PUNCT_RULES.length;

/** The proper starts of the contraction patterns (" ", " n", " n'", " '", " 'v", " 'r"): a text ending so may lose that space. */
const CONTRACTION_STARTS = [...new Set(CONTRACTION_RULES.flatMap((p) => Array.from({ length: p.length - 1 }, (_, n) => p.slice(0, n + 1))))];

/** The last character of every proper start of a pattern: a text ending otherwise cannot change. */
const PREFIX_ENDS = new Set([" ", "n", "'", "v", "r"]);

/** A text run through the rules: the characters left (as indices into the text) after some of them. */
interface Stages {
  /** After the punctuation rules, before " ' ". */
  beforeQuote: number[];
  /** Where, in the text before " ' ", its scan stood after its last match: a " ' " starting before here cannot match. */
  quoteScanEnd: number;
  /** After " ' ", before the contraction rules. */
  afterQuote: number[];
  /** After all rules. */
  kept: number[];
}

/** `text` run through the rules, keeping the indices of the characters left after each. */
function runRules(text: string): Stages {
  let kept = Array.from({ length: text.length }, (_, i) => i);
  let cur = text;
  let beforeQuote = kept, afterQuote = kept, quoteScanEnd = 0;
  RULES.forEach(([pattern, drops], step) => {
    if (step === QUOTE_STEP) beforeQuote = kept;
    let at = cur.indexOf(pattern);
    if (at >= 0) {
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
      if (step === QUOTE_STEP) quoteScanEnd = from;
    }
    if (step === QUOTE_STEP) afterQuote = kept;
  });
  return { beforeQuote, quoteScanEnd, afterQuote, kept };
}

/** The indices of `text` that `kept` leaves out, ascending. */
function droppedOf(text: string, kept: readonly number[]): number[] {
  const isKept = new Uint8Array(text.length);
  for (const i of kept) isKept[i] = 1;
  const dropped: number[] = [];
  for (let i = 0; i < text.length; i++) if (!isKept[i]) dropped.push(i);
  return dropped;
}

/** Where (an index into `text`) the characters `stage` leaves end with `suffix`, or undefined. */
function endsWith(text: string, stage: readonly number[], suffix: string): number | undefined {
  const start = stage.length - suffix.length;
  if (start < 0) return undefined;
  for (let j = 0; j < suffix.length; j++) if (text[stage[start + j]!] !== suffix[j]) return undefined;
  return stage[start];
}

/** The first index of `text` before `end` that one run keeps and the other drops, or undefined. */
function firstDifference(text: string, a: readonly number[], b: readonly number[], end: number): number | undefined {
  const inA = new Uint8Array(text.length), inB = new Uint8Array(text.length);
  for (const i of a) inA[i] = 1;
  for (const i of b) inB[i] = 1;
  for (let i = 0; i < end; i++) if (inA[i] !== inB[i]) return i;
  return undefined;
}

/**
 * The first index of `text` whose character a later piece can still keep or drop otherwise than the
 * text alone does (text.length: none). The three ways, as the header lists them.
 */
function changeableFrom(text: string): number {
  const n = text.length;
  if (n === 0 || !PREFIX_ENDS.has(text[n - 1]!)) return n;
  const alone = runRules(text);
  let from = n;
  const take = (i: number | undefined) => {
    if (i !== undefined && i < from) from = i;
  };
  // Punctuation next: the trailing space goes, and with it any " ' " ending there (the punctuation
  // then ends every match, so the rest is the text without that space, alone).
  if (text[n - 1] === " ") {
    take(n - 1);
    take(firstDifference(text, alone.kept, runRules(text.slice(0, n - 1)).kept, n - 1));
  }
  // " ' " across the end: the text before that rule ends with " " (the piece brings "' ") or " '" (the
  // piece brings " "), and no " ' " matched before took that space.
  const q = alone.beforeQuote;
  const spaceAt = [q.length - 1, q.length - 2].find((k) => k >= alone.quoteScanEnd && endsWith(text, q, QUOTE_RULE.slice(0, q.length - k)) !== undefined);
  if (spaceAt !== undefined) {
    const space = q[spaceAt]!;
    take(space);
    // Then "'" follows what " ' " left before that space: " 'm", …, " n't" can take a space there.
    const before = alone.afterQuote.filter((i) => i < space);
    take(endsWith(text, before, " "));
    take(endsWith(text, before, " n"));
  }
  // A contraction across the end.
  for (const start of CONTRACTION_STARTS) take(endsWith(text, alone.afterQuote, start));
  return from;
}

/** `text` cleaned up, and the indices in `text` of the spaces dropped (ascending). */
function cleanWithDrops(text: string): { text: string; dropped: number[] } {
  const { kept } = runRules(text);
  return { text: kept.map((i) => text[i]).join(""), dropped: droppedOf(text, kept) };
}

/** `text` as transformers' clean_up_tokenization leaves it. */
export function cleanUpSpaces(text: string): string {
  return cleanWithDrops(text).text;
}

/**
 * Text arriving in pieces, cleaned up (when `enabled`) as the whole text would be: the pieces push()
 * and finish() return add up to cleanUpSpaces(everything pushed). Disabled, text passes unchanged.
 */
export class SpaceCleaner {
  /** Text pushed past the last cut: not given out yet. */
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
    return this.giveUpTo(changeableFrom(this.pending));
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

  private giveUpTo(p: number): string {
    if (p === 0) return "";
    const done = cleanWithDrops(this.pending.slice(0, p));
    for (const d of done.dropped) this.dropped.push(this.cut + d);
    this.cut += p;
    this.pending = this.pending.slice(p);
    return done.text;
  }
}
