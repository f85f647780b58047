import type { CommandModule } from "yargs";
import { DEVICE_OPTION } from "./deviceOption.js";
import { emitJson, summaryWriter } from "./output.js";
import { exportDeepseek } from "../deepseek/fromMla.js";
import { stderrLogger } from "../util/log.js";
import type { DeviceName } from "../backends/select.js";
import { abortOnStop } from "./signals.js";
import { DEFAULT_CALIB_LEN, DEFAULT_CALIB_SAMPLES } from "../ropeSelect/calibrate.js";

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
  "attention-bias": boolean;
  calib?: string;
  "calib-samples"?: number;
  "calib-len"?: number;
  "eval-text"?: string;
  "eval-tokens"?: number;
  "eval-ctx"?: number;
  device: DeviceName;
  json?: string;
}

export const exportCommand: CommandModule<object, Args> = {
  command: "export <model>",
  describe: "write a model in our MLA format (converted, fine-tuned) as a deepseek_v3 folder, exactly (or bias-free for vLLM/SGLang with --no-attention-bias --calib FILE); needs no RoPE pair shared by two KV heads of a layer (convert --rope-disjoint)",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "an MLA folder written by `mha2mla convert` (or fine-tuned from one)" })
      .option("format", { choices: ["deepseek"] as const, demandOption: true, describe: "deepseek: a folder stock DeepseekV3ForCausalLM loads (vLLM and SGLang drop its attention biases; see --no-attention-bias)" })
      .option("out", { type: "string", describe: "output folder (default ./NAME-deepseek)" })
      .option("force", { type: "boolean", default: false, describe: "replace an existing --out" })
      .option("kv-lora-rank", { type: "number", describe: "kv_lora_rank, padded with zero channels (default: the latent + 1 constant channel, the latent alone with --no-attention-bias; 512 with --rope-dim 64 for the fused MLA kernels)" })
      .option("rope-dim", { type: "number", describe: "qk_rope_head_dim, padded with zero slots (default: 2 × the rope ladder's slots)" })
      .option("rope-interleave", { type: "boolean", default: true, describe: "interleaved rope rows (rope_interleave; vLLM expects them)" })
      .option("attention-bias", { type: "boolean", default: true, describe: "--no-attention-bias writes a folder without attention biases (attention_bias false) that vLLM and SGLang serve as written: no constant latent channel, kv_a_layernorm's weight fitted on --calib (required). An approximation where the default is exact (docs/deepseek.md)" })
      .option("calib", { type: "string", describe: "with --no-attention-bias: the text kv_a_layernorm's weight is fitted on" })
      // No yargs defaults: given without --calib they are refused, so given must differ from defaulted.
      .option("calib-samples", { type: "number", describe: `with --no-attention-bias: calibration windows of --calib (default ${DEFAULT_CALIB_SAMPLES}, or as many as the text holds)` })
      .option("calib-len", { type: "number", describe: `with --no-attention-bias: tokens per calibration window, BOS included (default ${DEFAULT_CALIB_LEN})` })
      .option("eval-text", { type: "string", describe: "NLL of the source and of the export on this text (equal for the exact form); writes report.json into --out" })
      .option("eval-tokens", { type: "number", describe: "tokens of --eval-text to score (default all)" })
      .option("eval-ctx", { type: "number", describe: "window length of the --eval-text perplexity, BOS included (default 256)" })
      .option("device", DEVICE_OPTION)
      .option("json", { type: "string", describe: "write the result summary as JSON to FILE (no value: stdout)" }),
  handler: async (a) => {
    const say = summaryWriter(a.json);
    const r = await abortOnStop(EXPORT_STOP, (signal) => exportDeepseek(a.model, { out: a.out, force: a.force, interleave: a["rope-interleave"], kvLoraRank: a["kv-lora-rank"], ropeDim: a["rope-dim"], attentionBias: a["attention-bias"], calib: a.calib, calibSamples: a["calib-samples"], calibLen: a["calib-len"], evalText: a["eval-text"], evalTokens: a["eval-tokens"], evalCtx: a["eval-ctx"], device: a.device, logger: stderrLogger, progress: process.stderr, signal }));
    if (!r) return;
    say(`wrote ${r.out} (deepseek_v3): shared rope key ${r.ropeDim} dims, kv_lora_rank ${r.kvLoraRank}, qk_nope_head_dim ${r.nopeDim}; cached values per token ${r.kvPerToken.before * r.layers} (ours) → ${r.kvPerToken.after * r.layers} (${r.kvPerToken.before} → ${r.kvPerToken.after} a layer)\n`);
    if (r.eval) say(`NLL ${r.eval.before.toFixed(5)} (source) → ${r.eval.after.toFixed(5)} (export), ${r.eval.tokens} tokens\n`);
    if (a.json !== undefined) emitJson(a.json, r);
  },
};
