/**
 * The JSON files this tool writes, told apart by their keys: one table for `--json`, which replaces
 * only a command's earlier result (src/cli/output.ts), and for the report, which names what a file
 * passed where an eval result goes is (src/eval/report/evalJson.ts).
 */

export interface ResultKind {
  /** The keys of the command's `--json` result, all present (test/cli/jsonResults.test.ts writes each and checks). */
  result: readonly string[];
  /** Other key sets that tell the same kind (a looser match, a run folder's own record, a conversion's report.json). */
  alsoTold: readonly (readonly string[])[];
  /** What the report's hint says it is, where an eval result was wanted ("": nothing to add). */
  hint: string;
}

/** In the order the report tries them: a value with eval's or inspect's key matches inspect's only once the others have not. */
export const RESULT_KINDS: readonly ResultKind[] = [
  {
    // finetune --json's result, or the run folder's own record (finetune.json).
    result: ["stoppedEarly", "steps"],
    alsoTold: [["stoppedEarly"], ["val_nll_after", "settings"]],
    hint: "this is a fine-tuning run's result, not an evaluation: evaluate its model with `mha2mla eval RUN --json FILE`, or chart its training with --train-log RUN/train_log.jsonl",
  },
  { result: ["plan", "selection"], alsoTold: [], hint: "this is a conversion's result, not an evaluation: evaluate each model with `mha2mla eval MODEL --json FILE`" },
  // The deepseek_v3 export or conversion; a conversion's report.json.
  { result: ["kvPerToken", "kvLoraRank"], alsoTold: [["kvLoraRank"], ["before", "after"]], hint: "this is a conversion's or export's result or report, which compares the two models itself" },
  // inspect's, and eval's (which a report takes, so its hint is for one with eval's fields missing).
  { result: ["kv_bytes_per_token"], alsoTold: [["kv_elems_per_token"]], hint: "an `inspect --json` file describes a model, not a run" },
  { result: ["tensors", "shards", "arch"], alsoTold: [], hint: "" }, // synth
];

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);
const hasAll = (v: Record<string, unknown>, keys: readonly string[]) => keys.every((k) => k in v);

/** Whether a parsed JSON value is a result a command of this tool wrote (its `--json`). */
export function isEarlierResult(value: unknown): boolean {
  return isObject(value) && RESULT_KINDS.some((k) => hasAll(value, k.result));
}

/** The first kind whose result's or other keys `value` has, or undefined. */
export function resultKindOf(value: unknown): ResultKind | undefined {
  if (!isObject(value)) return undefined;
  return RESULT_KINDS.find((k) => hasAll(value, k.result) || k.alsoTold.some((keys) => hasAll(value, keys)));
}
