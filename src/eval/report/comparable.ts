/**
 * Which runs' numbers a report may set against the first run's. A change is a change of the model
 * only where the rest was the same: perplexity and NLL need the same text, token count, ctx and
 * tokenizer (per-token NLL over another vocabulary's tokens is another quantity); bits per byte needs
 * the same bytes of the same text and ctx, whatever the tokenizer; a task's accuracy the same items.
 * What a run did not record (an older version's JSON: no tokenizer, no text hash) is not held against
 * it: the change is shown, with what is unknown.
 */
import path from "node:path";
import type { EvalResult } from "../evaluate.js";

/** How one run's value compares with the first run's: not at all (why), or with what is not known about it. */
export interface VsFirst {
  notComparable: string | null;
  unknown: string | null;
}

const name = (r: EvalResult) => (r.text ? path.basename(r.text) : "?");
/** Whether the two read the same text: by its hash where both recorded one, else by file name. */
const sameText = (a: EvalResult, b: EvalResult) => (a.text_hash && b.text_hash ? a.text_hash === b.text_hash : name(a) === name(b));
/** The text's name, marked where it is another text than the first run's of that same name. */
const textShown = (r: EvalResult, first: EvalResult) => (name(r) === name(first) && !sameText(r, first) ? `${name(r)} (other content)` : name(r));

const recordedData = (r: EvalResult) => r.text !== undefined || r.tokens !== undefined || r.ctx !== undefined;

function tokenizerShown(r: EvalResult): string {
  return `tokenizer ${r.tokenizer!.hash.slice(0, 8)} (${r.tokenizer!.vocab_size} tokens)`;
}

/** Per run, against the first: perplexity and NLL. */
export function perplexityVsFirst(runs: readonly EvalResult[]): VsFirst[] {
  const first = runs[0]!;
  return runs.map((r) => {
    const why: string[] = [];
    if (recordedData(r) !== recordedData(first)) why.push(recordedData(r) ? `${textShown(r, first)}, ${r.tokens ?? "?"} tokens, ctx ${r.ctx ?? "?"}` : "text, tokens and ctx not recorded");
    else if (recordedData(r) && (!sameText(r, first) || r.tokens !== first.tokens || r.ctx !== first.ctx)) why.push(`${textShown(r, first)}, ${r.tokens ?? "?"} tokens, ctx ${r.ctx ?? "?"}`);
    const tokenizers = r.tokenizer && first.tokenizer;
    if (tokenizers && (r.tokenizer!.hash !== first.tokenizer!.hash || r.tokenizer!.vocab_size !== first.tokenizer!.vocab_size)) why.push(`another ${tokenizerShown(r)}`);
    return { notComparable: why.length ? why.join("; ") : null, unknown: tokenizers ? null : "tokenizer not recorded" };
  });
}

/**
 * The runs in groups whose perplexities may be set side by side (indices into `runs`, in order): the
 * first run and those comparable with it, then the first run left and those comparable with it, …
 * One group when every run is comparable with the first.
 */
export function perplexityGroups(runs: readonly EvalResult[]): number[][] {
  const groups: number[][] = [];
  let left = runs.map((_, i) => i);
  while (left.length) {
    const vs = perplexityVsFirst(left.map((i) => runs[i]!));
    const group = left.filter((_, k) => vs[k]!.notComparable === null);
    groups.push(group);
    left = left.filter((i) => !group.includes(i));
  }
  return groups;
}

/** What a group's perplexities were measured on (a chart's title): text, tokens, ctx and tokenizer. */
export function perplexityBasis(r: EvalResult): string {
  if (!recordedData(r)) return "text, tokens and ctx not recorded";
  return `${name(r)}, ${r.tokens ?? "?"} tokens, ctx ${r.ctx ?? "?"}, ${r.tokenizer ? `tokenizer ${r.tokenizer.hash.slice(0, 8)}` : "tokenizer not recorded"}`;
}

/** Per run, against the first: bits per byte (the same bytes of the same text, and ctx). */
export function bitsPerByteVsFirst(runs: readonly EvalResult[]): VsFirst[] {
  const first = runs[0]!;
  return runs.map((r) => ({
    notComparable: !sameText(r, first) || r.text_bytes !== first.text_bytes || r.ctx !== first.ctx ? `${textShown(r, first)}, ${r.text_bytes ?? "?"} bytes, ctx ${r.ctx ?? "?"}` : null,
    unknown: null,
  }));
}

/** Per run, against the first: a task's scores (the same number of items, and the same items where both runs recorded them). */
export function itemsVsFirst(runs: readonly EvalResult[], task: string): VsFirst[] {
  const n = (r: EvalResult) => r.tasks?.[task]?.n;
  const hash = (r: EvalResult) => r.tasks?.[task]?.items_hash;
  const first = runs[0]!;
  return runs.map((r) => ({
    notComparable: n(r) !== n(first) ? `${n(r) ?? "?"} items` : hash(r) !== undefined && hash(first) !== undefined && hash(r) !== hash(first) ? `other items (${n(r)}, data ${hash(r)!.slice(0, 8)})` : null,
    unknown: null,
  }));
}

/** What a run's perplexity was measured on, for the list of models. */
export function measuredOnText(r: EvalResult): string {
  if (!r.text) return "";
  // A hand-edited or older result may lack (or null) any of them: "?", as the tables show it.
  const bytes = r.text_bytes != null ? `, ${r.text_bytes} bytes` : "";
  return `; text ${name(r)} (${r.tokens ?? "?"} tokens, ctx ${r.ctx ?? "?"}${bytes}); ${r.tokenizer ? tokenizerShown(r) : "tokenizer not recorded"}`;
}
