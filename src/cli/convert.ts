import { DEVICE_OPTION } from "./deviceOption.js";
import type { CommandModule } from "yargs";
import { convert } from "../convert/pipeline.js";
import { ConversionArgs, conversionSettings, withConversionOptions } from "./conversionOptions.js";
import { stderrLogger } from "../util/log.js";
import { emitJson, summaryWriter } from "./output.js";
import { convertDeepseek, deepseekSettings } from "../deepseek/export.js";
import { booleanFlag, refuseInert } from "../errors.js";

import type { DeviceName } from "../backends/select.js";
import { countOf } from "../util/counts.js";

interface Args extends ConversionArgs {
  model: string;
  out?: string;
  force: boolean;
  "dry-run": boolean;
  "eval-text"?: string;
  "eval-tokens"?: number;
  "eval-ctx"?: number;
  json?: string;
  device: DeviceName;
  format: "mha2mla" | "deepseek";
  "rope-dim"?: number;
  "kv-lora-rank"?: number;
  "rope-interleave"?: boolean;
  "attention-bias"?: boolean;
}

export const convertCommand: CommandModule<object, Args> = {
  command: "convert <model>",
  describe: "convert an MHA/GQA checkpoint to MLA (partial RoPE + low-rank joint KV)",
  builder: (y) =>
    withConversionOptions(y)
      .positional("model", { type: "string", demandOption: true, describe: "model folder, HF hub id in the local cache, or alias" })
      .option("out", { type: "string", describe: "output folder (default ./NAME-mla-r<rank>; deepseek: ./NAME-deepseek-r<rank>, or ./NAME-deepseek-kv<K> where --kv-lora-rank K sets the cache and --rank nothing)" })
      .option("force", { type: "boolean", default: false, describe: "replace an existing --out" })
      .option("dry-run", { type: "boolean", default: false, describe: "check the settings as the run would (the --calib windows are cut, the --device library loaded) and print the KV-cache accounting; converts nothing" })
      .option("eval-text", { type: "string", describe: "evaluate perplexity before and after; writes report.md/report.json into --out" })
      .option("eval-tokens", { type: "number", describe: "tokens of --eval-text to score (default all)" })
      .option("eval-ctx", { type: "number", describe: "window length of the --eval-text perplexity, BOS included (default 256)" })
      .option("device", DEVICE_OPTION)
      .option("format", { choices: ["mha2mla", "deepseek"] as const, default: "mha2mla" as const, describe: "mha2mla: our MLA format (per-head partial RoPE); deepseek: a deepseek_v3 folder stock DeepseekV3ForCausalLM loads (one shared rope key, RoRoPE; vLLM and SGLang drop its attention biases unless --no-attention-bias)" })
      .option("rope-dim", { type: "number", describe: "deepseek: qk_rope_head_dim, the shared rope key's width (default min(2·R·KV heads, head_dim))" })
      .option("kv-lora-rank", { type: "number", describe: "deepseek: kv_lora_rank (default: the KV bytes of the same --rank/--rope-pairs in our format, less the rope dim). Given, --rank sets nothing; with --rope-dim too, or a --rope-pairs past what fills head_dim, a --rope-pairs is taken only where --rank/--rope-pairs budget exactly this cache (docs/deepseek.md)" })
      // No yargs defaults: given without --format deepseek they are refused (either way), so given must differ from defaulted.
      .option("rope-interleave", { type: "boolean", describe: "deepseek: interleaved rope rows (rope_interleave; vLLM expects them; default on)" })
      .option("attention-bias", { type: "boolean", describe: "deepseek: --no-attention-bias writes a folder without attention biases (attention_bias false) that vLLM and SGLang serve as written: no constant latent channel, kv_a_layernorm's weight fitted on --calib (required). An approximation where the default is exact (docs/deepseek.md)" })
      .option("json", { type: "string", describe: "write the result summary as JSON to FILE (no value: stdout)" }),
  handler: async (a) => {
    const say = summaryWriter(a.json);
    // The deepseek_v3 widths and layout do nothing in our format: refused, not dropped unseen.
    if (a.format !== "deepseek")
      refuseInert(
        [["--rope-dim", a["rope-dim"]], ["--kv-lora-rank", a["kv-lora-rank"]], [booleanFlag("rope-interleave", a["rope-interleave"]), a["rope-interleave"]], [booleanFlag("attention-bias", a["attention-bias"]), a["attention-bias"]]],
        "--format deepseek",
        "settings of the deepseek_v3 folder's rope key, latent and biases",
      );
    // conversionSettings fills in the default windows for a pipeline's run identity; convert keeps none,
    // so it passes them as given and its note on a short --calib tells the default from an ask.
    const windows = { calibSamples: a["calib-samples"], calibLen: a["calib-len"] };
    if (a.format === "deepseek") {
      const d = await convertDeepseek(a.model, { ...deepseekSettings({ ...conversionSettings(a, "deepseek"), ...windows }), ropeDim: a["rope-dim"], kvLoraRank: a["kv-lora-rank"], interleave: a["rope-interleave"], attentionBias: a["attention-bias"], dryRun: a["dry-run"], evalText: a["eval-text"], evalTokens: a["eval-tokens"], evalCtx: a["eval-ctx"], out: a.out, force: a.force, device: a.device, logger: stderrLogger, progress: process.stderr });
      // Per token over all layers, as the mha2mla format's summary counts (the result's kvPerToken is per layer).
      const k = d.kvPerToken;
      const kv = `KV cache per token ${k.before * d.layers} → ${k.after * d.layers} elements (${k.changePercent.toFixed(2)}%; ${k.before} → ${k.after} a layer), shared rope key ${d.ropeDim} dims, kv_lora_rank ${d.kvLoraRank}`;
      say(d.out ? `wrote ${d.out} (deepseek_v3): ${kv}\n` : `dry run (deepseek_v3): ${kv}\n`);
      if (d.eval) say(`perplexity ${Math.exp(d.eval.before).toFixed(3)} → ${Math.exp(d.eval.after).toFixed(3)} (NLL ${d.eval.nll_delta >= 0 ? "+" : ""}${d.eval.nll_delta.toFixed(4)}); report: ${d.out}/report.md\n`);
      if (a.json !== undefined) emitJson(a.json, d);
      return;
    }
    const r = await convert(a.model, {
      ...conversionSettings(a, "mha2mla"),
      ...windows,
      device: a.device,
      out: a.out,
      force: a.force,
      dryRun: a["dry-run"],
      evalText: a["eval-text"],
      evalTokens: a["eval-tokens"],
      evalCtx: a["eval-ctx"],
      logger: stderrLogger,
      progress: process.stderr,
    });
    const p = r.plan;
    const kv = `KV cache per token ${p.before.elems_per_token} → ${p.after.elems_per_token} elements (${p.kvChangePercent.toFixed(2)}%), ${p.before.bytes_per_token} → ${p.after.bytes_per_token} bytes`;
    const perLayer = p.settings.kvSplit === "per-layer" ? ` (split per layer from R ${p.settings.kvSplitPairs!.join(", ")} at the same bytes)` : "";
    if (!r.out) say(`dry run: rank ${p.settings.rank}, ${countOf(p.settings.ropePairs, "RoPE pair")} (${p.settings.ropeStrategy}), latent ${p.latentDim} dims per layer${perLayer}; ${kv}\n`);
    else {
      say(`wrote ${r.out} in ${r.timings["total_s"]!.toFixed(1)} s; ${kv}\n`);
      if (perLayer) say(`split per layer (R, rank): ${r.splits!.map((x) => `${x.ropePairs}, ${x.rank}`).join(" | ")}\n`);
      if (r.report) say(`perplexity ${r.report.before.ppl.toFixed(3)} → ${r.report.after.ppl.toFixed(3)} (NLL ${r.report.nll_delta >= 0 ? "+" : ""}${r.report.nll_delta.toFixed(4)}); report: ${r.out}/report.md\n`);
    }
    if (a.json !== undefined) emitJson(a.json, r);
  },
};
