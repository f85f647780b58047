import path from "node:path";
import { DEVICE_OPTION } from "./deviceOption.js";
import type { CommandModule } from "yargs";
import { pipeline, type PipelineOptions } from "../pipeline.js";
import { FINETUNE_DEFAULTS as D } from "../finetune/trainer.js";
import { ConversionArgs, conversionSettings, withConversionOptions } from "./conversionOptions.js";
import { parseTaskNames } from "../eval/tasks/index.js";
import { stderrLogger } from "../util/log.js";
import { abortOnStop, type StopMessages } from "./signals.js";

import type { DeviceName } from "../backends/select.js";

interface Args extends ConversionArgs {
  model: string;
  out: string;
  force: boolean;
  "finetune-data"?: string[];
  tokens?: number;
  seq?: number;
  batch?: number;
  lr?: number;
  distill?: string;
  "save-every"?: number;
  "save-every-minutes"?: number;
  "val-tokens"?: number;
  "eval-text"?: string;
  "eval-tokens"?: number;
  "eval-ctx"?: number;
  tasks?: string;
  "data-dir"?: string;
  limit?: number;
  device: DeviceName;
  format: "mha2mla" | "deepseek";
  "rope-dim"?: number;
  "kv-lora-rank"?: number;
  export?: "deepseek";
  "attention-bias"?: boolean;
}

const PIPELINE_STOP: StopMessages = {
  stopping: "stopping the phase under way at its next safe point (a conversion after the factorization or calibration window under way, an evaluation after this window or item, a fine-tune after this step or validation window, with the last step's checkpoint)",
  kept: "the pipeline folder keeps its finished phases and the fine-tune's last checkpoint, if one was saved; re-running the same command resumes",
};

/** The fine-tune's options, whenever one of its flags is given: the pipeline refuses them without --finetune-data, rather than drop them. */
function finetuneOptions(a: Args): PipelineOptions["finetune"] {
  const given = { tokens: a.tokens, seq: a.seq, batch: a.batch, lr: a.lr, distill: a.distill, saveEvery: a["save-every"], saveEveryMinutes: a["save-every-minutes"], valTokens: a["val-tokens"] };
  if (!a["finetune-data"] && Object.values(given).every((v) => v === undefined)) return undefined;
  // No device: the pipeline hands its own to the fine-tune, and a run resumes on any device.
  return { data: a["finetune-data"] ?? [], ...given };
}

export const pipelineCommand: CommandModule<object, Args> = {
  command: "pipeline <model>",
  describe: "convert → optional fine-tune → optional export to deepseek_v3 → eval before and after → report, resumable by phase",
  builder: (y) =>
    withConversionOptions(y)
      .positional("model", { type: "string", demandOption: true, describe: "the original (MHA/GQA) model: folder, HF hub id in the local cache, or alias" })
      .option("out", { type: "string", demandOption: true, describe: "pipeline folder (re-run the same command to resume)" })
      .option("force", { type: "boolean", default: false, describe: "start over in an existing --out" })
      .option("finetune-data", { type: "string", array: true, describe: "fine-tune on these files (skipped when absent)" })
      .option("tokens", { type: "number", describe: "fine-tuning token budget" })
      // No yargs defaults: a --seq given without --finetune-data is refused, so given must differ from defaulted.
      .option("seq", { type: "number", describe: `fine-tuning sequence length, BOS included (default ${D.seq})` })
      .option("batch", { type: "number", describe: `fine-tuning batch (default ${D.batch})` })
      .option("lr", { type: "number", describe: "peak learning rate (default by model size: 1e-3 under 10M parameters, 2e-4 under 100M, else 1e-4)" })
      .option("distill", { type: "string", describe: "teacher for distillation during fine-tuning" })
      .option("save-every", { type: "number", describe: "the fine-tune's checkpoint every N steps (0 or unset: only when stopped), as finetune's; a rerun resumes it from the last" })
      .option("save-every-minutes", { type: "number", describe: "the fine-tune's checkpoint also after every M minutes of training, so a hard kill loses at most that much" })
      .option("val-tokens", { type: "number", describe: "the fine-tune's validations score only the first N tokens of the held-out tail (the last 10% of --finetune-data), as finetune's" })
      .option("eval-text", { type: "string", describe: "perplexity text" })
      .option("eval-tokens", { type: "number", describe: "tokens of --eval-text to score (default all)" })
      .option("eval-ctx", { type: "number", describe: "window length of the --eval-text perplexity, BOS included (default 256)" })
      .option("tasks", { type: "string", describe: "benchmarks, comma-separated" })
      .option("data-dir", { type: "string", describe: "folder with the task files (default $MHA2MLA_EVAL_DATA or ../shared/data/eval)" })
      .option("limit", { type: "number", describe: "first N items of each task" })
      .option("device", DEVICE_OPTION)
      .option("format", { choices: ["mha2mla", "deepseek"] as const, default: "mha2mla" as const, describe: "the converted model's format (see convert --format)" })
      .option("rope-dim", { type: "number", describe: "deepseek: qk_rope_head_dim" })
      .option("kv-lora-rank", { type: "number", describe: "deepseek: kv_lora_rank" })
      .option("export", { choices: ["deepseek"] as const, describe: "also write the final model as a deepseek_v3 folder (OUT/deepseek; exact; needs --rope-disjoint)" })
      // No yargs default: given without --format deepseek or --export deepseek it is refused (either way), so given must differ from defaulted.
      .option("attention-bias", { type: "boolean", describe: "with --format deepseek or --export deepseek: --no-attention-bias writes that folder without attention biases, which vLLM and SGLang serve as written (kv_a_layernorm's weight fitted on --calib, which it needs; docs/deepseek.md)" }),
  handler: async (a) => {
    // The first signal aborts the phase under way (a signal, not shouldStop, which only the fine-tune
    // polls: a long conversion or evaluation would otherwise run to its end before the stop). Each
    // phase's output appears only when whole (a folder or JSON renamed into place), so the stop leaves
    // finished phases and nothing else, except a fine-tune's checkpoint, which it resumes from.
    const say = {
      ...PIPELINE_STOP,
      stopped: `the finished phases are kept in ${path.resolve(a.out)}, and the one cut short left nothing half-written; re-running the same command resumes${a["finetune-data"] ? " (an interrupted fine-tune from its last checkpoint)" : ""}; other settings need --force, which starts over`,
      stoppedTo: "stdout" as const,
    };
    const r = await abortOnStop(say, (signal) =>
      pipeline(a.model, {
        out: a.out,
        force: a.force,
        convert: conversionSettings(a, a.format),
        format: a.format,
        deepseek: { ropeDim: a["rope-dim"], kvLoraRank: a["kv-lora-rank"] },
        export: a.export,
        // Only as given: a run's identity counts only false, so a run started before the flag keeps its fingerprint.
        attentionBias: a["attention-bias"],
        finetune: finetuneOptions(a),
        device: a.device,
        evalText: a["eval-text"],
        evalTokens: a["eval-tokens"],
        evalCtx: a["eval-ctx"],
        tasks: a.tasks ? parseTaskNames(a.tasks) : undefined,
        dataDir: a["data-dir"],
        limit: a.limit,
        logger: stderrLogger,
        progress: process.stderr,
        signal,
      }),
    );
    if (!r) return;
    // The report's own line says where it is; one "report:" line, not two.
    for (const p of r.phases) if (p.name !== "report") process.stdout.write(`${p.name}: ${p.skipped ? "already done" : `${p.seconds.toFixed(1)} s`}\n`);
    const total = r.phases.reduce((t, p) => t + p.seconds, 0);
    process.stdout.write(`report: ${r.report!.html} (and .md); this run took ${total.toFixed(1)} s\n`);
  },
};
