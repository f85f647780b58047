import type { WeightStorage } from "../model/weights.js";
import { DEVICE_OPTION } from "./deviceOption.js";
import type { CommandModule } from "yargs";
import { evaluate } from "../eval/evaluate.js";
import type { DeviceName } from "../backends/select.js";
import { stderrLogger } from "../util/log.js";
import { emitJson, summaryWriter } from "./output.js";
import { parseTaskNames, TASKS } from "../eval/tasks/index.js";
import { KV_CACHE_DTYPES, KvCacheDtype } from "../model/kvQuant.js";
import { refuseInert } from "../errors.js";
import { countOf } from "../util/counts.js";

interface Args {
  model: string;
  text?: string;
  tasks?: string;
  "data-dir"?: string;
  limit?: number;
  label?: string;
  ctx?: number;
  tokens?: number;
  json?: string;
  device: DeviceName;
  weights: WeightStorage;
  "kv-cache"?: KvCacheDtype;
  batch?: number;
}

export const evalCommand: CommandModule<object, Args> = {
  command: "eval <model>",
  describe: "perplexity on a text ([BOS] + ctx−1 token windows) and/or benchmark tasks (acc, acc_norm)",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "model folder, HF hub id in the local cache, or alias" })
      .option("text", { type: "string", describe: "UTF-8 text file to score (perplexity)" })
      .option("tasks", { type: "string", describe: `benchmarks, comma-separated: ${Object.keys(TASKS).join(",")}` })
      .option("data-dir", { type: "string", describe: "folder with the task files (default $MHA2MLA_EVAL_DATA or ../shared/data/eval)" })
      .option("limit", { type: "number", describe: "first N items of each task" })
      .option("label", { type: "string", describe: "with --json: name of this run in the JSON, which report shows (default: MODEL as given)" })
      .option("ctx", { type: "number", describe: "window length of the --text perplexity, BOS included (default 256)" })
      .option("tokens", { type: "number", describe: "score only the first N tokens of the text" })
      .option("json", { type: "string", describe: "write the result as JSON to FILE (no value: stdout)" })
      .option("device", DEVICE_OPTION)
      .option("weights", { choices: ["auto", "f32"] as const, default: "auto" as const, describe: "auto: a bf16 checkpoint's linear weights (and a tied embedding, the LM head's weight) stay bf16 on the GPU (bf16 GEMMs, f32 accumulation); f32: decode them to float32" })
      .option("batch", { type: "number", describe: "perplexity windows of --text scored per forward (default on the GPU: as many as keep the activations within an eighth of free memory, up to 16; 1 elsewhere)" })
      .option("kv-cache", { choices: KV_CACHE_DTYPES, describe: "score perplexity and the tasks as a decode cache of this type serves keys/values (MLA: rope keys and latents): bf16, or int8/int4 in groups of 32 with a bf16 scale each; the JSON gives its bytes per token" }),
  handler: async (a) => {
    // The label lives in the JSON only (the summary lines name the model): without it, it was dropped unseen.
    if (a.json === undefined) refuseInert([["--label", a.label]], "--json FILE", "it names the run in the JSON result, which report reads");
    const say = summaryWriter(a.json);
    const r = await evaluate(a.model, { text: a.text, ctx: a.ctx, tokens: a.tokens, tasks: a.tasks ? parseTaskNames(a.tasks) : undefined, dataDir: a["data-dir"], limit: a.limit, label: a.label, device: a.device, weights: a.weights, kvCache: a["kv-cache"], batch: a.batch, logger: stderrLogger, progress: process.stderr });
    if (r.nll !== undefined) say(`${r.model}: nll ${r.nll.toFixed(5)} nats/token, ppl ${r.ppl!.toFixed(4)}${r.bits_per_byte !== undefined ? `, ${r.bits_per_byte.toFixed(4)} bits/byte` : ""} over ${r.tokens} tokens (ctx ${r.ctx}, ${countOf(r.windows ?? 0, "window")}) on ${r.backend}\n`);
    for (const [t, s] of Object.entries(r.tasks ?? {}))
      say(`${t}: acc ${s.acc.toFixed(4)} ± ${s.acc_stderr.toFixed(4)}${s.acc_norm !== undefined ? `, acc_norm ${s.acc_norm.toFixed(4)} ± ${s.acc_norm_stderr!.toFixed(4)}` : ""}${s.ppl !== undefined ? `, ppl ${s.ppl.toFixed(2)}` : ""} (n ${s.n})\n`);
    if (r.kv_cache) say(`KV cache ${r.kv_cache.dtype}: ${r.kv_cache.bytes_per_token} bytes per token (all layers)\n`);
    say(`evaluated in ${r.seconds.toFixed(1)} s\n`);
    if (a.json !== undefined) emitJson(a.json, r);
  },
};
