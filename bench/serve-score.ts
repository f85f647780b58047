/**
 * Multiple-choice scoring through `mha2mla serve`, as lm-eval's local-completions sends it: for each
 * item, each choice as one completion request of [BOS] + tokens(context + choice) with `echo`,
 * `logprobs: 1` and `max_tokens: 1`, one request at a time (lm-eval's num_concurrent=1). Prefix cache
 * off against on: with it, a choice after the first of its item starts from the kept scores of the
 * shared context (serve's scored prefix reuse). Each row: seconds, choices/s, the share of prompt
 * tokens the server did not prefill, and the largest difference of the continuations' log-likelihoods
 * from `choiceLoglikelihoods` (the in-process scoring `eval --tasks` runs).
 *
 * Run: node dist/bench/serve-score.js MODEL [--task arc-easy] [--limit 30] [--device cpu] [--data-dir DIR]
 */
import path from "node:path";
import { serve } from "../src/serve/server.js";
import { loadModel } from "../src/model/llama.js";
import { selectBackend, type DeviceName } from "../src/backends/select.js";
import { choiceLoglikelihoods } from "../src/eval/tasks/score.js";
import { defaultDataDir, TASKS, checkTaskName, type TaskName } from "../src/eval/tasks/index.js";
import { packageRoot } from "../src/io/modelDir.js";
import { benchArgs } from "./args.js";

const { opt: flag, first: model } = benchArgs(process.argv.slice(2), "node dist/bench/serve-score.js MODEL [--task arc-easy] [--limit 30] [--device cpu] [--data-dir DIR]");
const task = flag("task", "arc-easy");
checkTaskName(task);
const spec = TASKS[task as TaskName];
if (spec.kind !== "choice") throw new Error(`${task} is not a multiple-choice task`);
const items = spec.load(path.join(flag("data-dir", defaultDataDir(packageRoot()) ?? ""), spec.file), Number(flag("limit", "30")));
const lm = loadModel(model, { backend: selectBackend(flag("device", "cpu") as DeviceName) });
const bos = lm.config.bosTokenId ?? 1;
const want = items.map((it) => choiceLoglikelihoods(lm.model, lm.tokenizer, it.context, it.choices).map((r) => r.logprob));

console.log(`| prefix cache | items | choices | seconds | choices/s | prompt tokens not prefilled | max |Δ log-likelihood| vs eval |`);
console.log(`| --- | --- | --- | --- | --- | --- | --- |`);
for (const prefixCacheMb of [0, 1024]) {
  const server = await serve(lm, { port: 0, prefixCacheMb, name: "m" });
  try {
    let diff = 0, choices = 0, promptTokens = 0;
    const t0 = performance.now();
    for (const [i, it] of items.entries()) {
      const ctx = lm.tokenizer.encode(it.context);
      for (const [j, choice] of it.choices.entries()) {
        const ids = [bos, ...lm.tokenizer.encode(it.context + choice)];
        const r = await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: [ids], temperature: 0, max_tokens: 1, logprobs: 1, seed: 1234, echo: true }) });
        const lp = ((await r.json()) as { choices: { logprobs: { token_logprobs: (number | null)[] } }[] }).choices[0]!.logprobs.token_logprobs;
        // As lm-eval reads it: the continuation's tokens, past the context's (+1 for BOS), less the generated one.
        const ll = (lp.slice(ctx.length + 1, -1) as number[]).reduce((a, x) => a + x, 0);
        diff = Math.max(diff, Math.abs(ll - want[i]![j]!));
        choices++;
        promptTokens += ids.length;
      }
    }
    const s = (performance.now() - t0) / 1000;
    const reused = server.stats().prefixCache?.reusedTokens ?? 0;
    console.log(`| ${prefixCacheMb ? `${prefixCacheMb} MB` : "off"} | ${items.length} | ${choices} | ${s.toFixed(2)} | ${(choices / s).toFixed(1)} | ${((100 * reused) / promptTokens).toFixed(0)}% | ${diff.toExponential(1)} |`);
  } finally {
    await server.close();
  }
}
