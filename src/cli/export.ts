import type { CommandModule } from "yargs";
import { DEVICE_OPTION } from "./deviceOption.js";
import { checkJsonTarget, emitJson, summaryWriter } from "./output.js";
import { exportDeepseek } from "../deepseek/fromMla.js";
import { stderrLogger } from "../util/log.js";
import type { DeviceName } from "../backends/select.js";
import { abortOnStop } from "./signals.js";

/** Ctrl-C: the export stops at its next layer (or evaluation window) and removes its temporary folder. */
const EXPORT_STOP = {
  stopping: "stopping after the layer (or evaluation window) under way, removing the unfinished output",
  kept: "no partial output was left behind",
  stopped: "nothing was written (an existing --out is as it was)",
};

interface Args {
  model: string;
  format: "deepseek";
  out?: string;
  force: boolean;
  "rope-interleave": boolean;
  "kv-lora-rank"?: number;
  "rope-dim"?: number;
  "eval-text"?: string;
  "eval-tokens"?: number;
  "eval-ctx"?: number;
  device: DeviceName;
  json?: string;
}

export const exportCommand: CommandModule<object, Args> = {
  command: "export <model>",
  describe: "write a model in our MLA format (converted, fine-tuned) as a deepseek_v3 folder, exactly; needs no RoPE pair shared by two KV heads of a layer (convert --rope-disjoint)",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "an MLA folder written by `mha2mla convert` (or fine-tuned from one)" })
      .option("format", { choices: ["deepseek"] as const, demandOption: true, describe: "deepseek: a folder stock DeepseekV3ForCausalLM loads (vLLM and SGLang drop its attention biases)" })
      .option("out", { type: "string", describe: "output folder (default ./NAME-deepseek)" })
      .option("force", { type: "boolean", default: false, describe: "replace an existing --out" })
      .option("kv-lora-rank", { type: "number", describe: "kv_lora_rank, padded with zero channels (default: the latent + 1 constant channel; 512 with --rope-dim 64 for the fused MLA kernels)" })
      .option("rope-dim", { type: "number", describe: "qk_rope_head_dim, padded with zero slots (default: 2 × the rope ladder's slots)" })
      .option("rope-interleave", { type: "boolean", default: true, describe: "interleaved rope rows (rope_interleave; vLLM expects them)" })
      .option("eval-text", { type: "string", describe: "NLL of the source and of the export on this text (they should agree); writes report.json into --out" })
      .option("eval-tokens", { type: "number", describe: "tokens of --eval-text to score (default all)" })
      .option("eval-ctx", { type: "number", describe: "window length of the --eval-text perplexity, BOS included (default 256)" })
      .option("device", DEVICE_OPTION)
      .option("json", { type: "string", describe: "write the result summary as JSON to FILE (no value: stdout)" }),
  handler: async (a) => {
    const say = summaryWriter(a.json);
    checkJsonTarget(a.json);
    const r = await abortOnStop(EXPORT_STOP, (signal) => exportDeepseek(a.model, { out: a.out, force: a.force, interleave: a["rope-interleave"], kvLoraRank: a["kv-lora-rank"], ropeDim: a["rope-dim"], evalText: a["eval-text"], evalTokens: a["eval-tokens"], evalCtx: a["eval-ctx"], device: a.device, logger: stderrLogger, progress: process.stderr, signal }));
    if (!r) return;
    say(`wrote ${r.out} (deepseek_v3): shared rope key ${r.ropeDim} dims, kv_lora_rank ${r.kvLoraRank}, qk_nope_head_dim ${r.nopeDim}; cached values per token and layer ${r.kvPerToken.before} (ours) → ${r.kvPerToken.after}\n`);
    if (r.eval) say(`NLL ${r.eval.before.toFixed(5)} (source) → ${r.eval.after.toFixed(5)} (export), ${r.eval.tokens} tokens\n`);
    if (a.json !== undefined) emitJson(a.json, r);
  },
};
