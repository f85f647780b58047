/**
 * Multiple-choice scoring (eval --tasks): each choice as a whole forward (`loglikelihood`, the way
 * before) against the choices of an item sharing one prefill of their context, the LM head over the
 * continuations' rows alone (`choiceLoglikelihoods`, what runTask uses). Per task: ms per choice, the
 * speedup, and the largest difference between the two scores (rounding only).
 *
 * Run: node dist/bench/task-scoring.js MODEL_DIR [--device cpu] [--tasks arc-easy,hellaswag,piqa] [--limit 30] [--data-dir DIR]
 */
import path from "node:path";
import { selectBackend, type DeviceName } from "../src/backends/select.js";
import { loadModel } from "../src/model/llama.js";
import { choiceLoglikelihoods, loglikelihood } from "../src/eval/tasks/score.js";
import { defaultDataDir, parseTaskNames, TASKS } from "../src/eval/tasks/index.js";
import { packageRoot } from "../src/io/modelDir.js";
import { stderrLogger } from "../src/util/log.js";
import { benchArgs } from "./args.js";

const { opt, first: dir } = benchArgs(process.argv.slice(2), "node dist/bench/task-scoring.js MODEL_DIR [--device cpu] [--tasks arc-easy,hellaswag,piqa] [--limit 30] [--data-dir DIR]");
const { model, tokenizer } = loadModel(dir, { backend: selectBackend(opt("device", "cpu") as DeviceName, stderrLogger) });
const data = opt("data-dir", defaultDataDir(packageRoot()) ?? "");
const limit = Number(opt("limit", "30"));
console.log(`| task | items | choices | tokens per choice (context) | whole forward per choice, ms | shared context, ms | speedup | max |Δ score| |`);
console.log(`| --- | --- | --- | --- | --- | --- | --- | --- |`);
for (const task of parseTaskNames(opt("tasks", "arc-easy,hellaswag,piqa"))) {
  const spec = TASKS[task];
  if (spec.kind !== "choice") continue;
  const items = spec.load(path.join(data, spec.file), limit);
  const choices = items.reduce((n, it) => n + it.choices.length, 0);
  let t0 = performance.now();
  const before = items.map((it) => it.choices.map((c) => loglikelihood(model, tokenizer, it.context, c).logprob));
  const whole = (performance.now() - t0) / choices;
  t0 = performance.now();
  const after = items.map((it) => choiceLoglikelihoods(model, tokenizer, it.context, it.choices).map((r) => r.logprob));
  const shared = (performance.now() - t0) / choices;
  const diff = Math.max(...before.flatMap((xs, i) => xs.map((x, j) => Math.abs(x - after[i]![j]!))));
  const tokens = items.reduce((n, it) => n + it.choices.reduce((m, c) => m + tokenizer.encode(it.context + c).length, 0), 0) / choices;
  const context = items.reduce((n, it) => n + tokenizer.encode(it.context).length * it.choices.length, 0) / choices;
  console.log(`| ${task} | ${items.length} | ${choices} | ${tokens.toFixed(0)} (${context.toFixed(0)}) | ${whole.toFixed(1)} | ${shared.toFixed(1)} | ${(whole / shared).toFixed(2)}× | ${diff.toExponential(1)} |`);
}
