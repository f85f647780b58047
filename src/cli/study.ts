import path from "node:path";
import type { CommandModule } from "yargs";
import type { DeviceName } from "../backends/select.js";
import { STUDY_RANKS, STUDY_SAVE_MINUTES, STUDY_VARIANTS, study, type StudyVariant } from "../study/study.js";
import { stderrLogger } from "../util/log.js";
import { DEVICE_OPTION } from "./deviceOption.js";
import { DEFAULT_GATE_DIM } from "../convert/plan.js";
import { abortOnStop, type StopMessages } from "./signals.js";

interface Args {
  like: string;
  variants: string;
  ranks?: string;
  data: string;
  tokens: number;
  out: string;
  seq: number;
  batch: number;
  lr: number;
  seed: number;
  "gate-dim"?: number;
  "eval-every"?: number;
  "save-every"?: number;
  device: DeviceName;
  force: boolean;
}

const STUDY_STOP: StopMessages = {
  stopping: "stopping the run under way at its next safe point (a conversion after the factorization under way, training after this step or validation window, with the last step's checkpoint, the decode measurement after this forward pass)",
  kept: "the study folder keeps its finished runs and the last training checkpoint, if one was saved; re-running the same command resumes",
};

export const studyCommand: CommandModule<object, Args> = {
  command: "study",
  describe: "train attention variants (MHA, MLA, MLA + RoPE, EG-MLA) from scratch on the same data and budget; report validation NLL, KV bytes and decode speed",
  builder: (y) =>
    y
      .option("like", { type: "string", demandOption: true, describe: "model folder whose shape and tokenizer the variants take (its weights are not used)" })
      .option("variants", { type: "string", default: STUDY_VARIANTS.join(","), describe: `comma-separated: ${STUDY_VARIANTS.join(", ")}` })
      // No yargs defaults for --ranks and --gate-dim: the study refuses them where no variant uses them, so given must differ from defaulted.
      .option("ranks", { type: "string", describe: `latent widths per token and layer of the MLA variants: d, d/N of the hidden size, or whole numbers, each a multiple of the KV heads (default ${STUDY_RANKS.join(",")}); refused without an MLA variant` })
      .option("data", { type: "string", demandOption: true, describe: "training text (.txt, .jsonl, or .xz of one); the last 1% is held out" })
      .option("tokens", { type: "number", demandOption: true, describe: "training tokens per variant" })
      .option("out", { type: "string", demandOption: true, describe: "study folder: each variant's model and run, study.json, report.md, report.html" })
      .option("seq", { type: "number", default: 256, describe: "sequence length, BOS included" })
      .option("batch", { type: "number", default: 16, describe: "sequences per step" })
      .option("lr", { type: "number", default: 1e-3, describe: "peak learning rate (warmup 5%, WSD decay)" })
      .option("seed", { type: "number", default: 0, describe: "seed of the one initialization all variants start from, and of the data order" })
      .option("gate-dim", { type: "number", describe: `EG-MLA's gate width (default ${DEFAULT_GATE_DIM}); refused without eg-mla in --variants` })
      .option("eval-every", { type: "number", describe: "validation NLL every N steps, N ≥ 1 (default: 20 points per run)" })
      .option("save-every", { type: "number", describe: `a training checkpoint every N steps of each run, to resume from after a hard kill (default: after every ${STUDY_SAVE_MINUTES} minutes of training; 0: only when stopped with Ctrl-C)` })
      .option("device", DEVICE_OPTION)
      .option("force", { type: "boolean", default: false, describe: "start over in an existing --out (without it, re-running the same command resumes)" }),
  handler: async (a) => {
    // The first signal aborts the run under way (a signal, not shouldStop, which only training polls:
    // a run's conversion or decode measurement would otherwise run to its end before the stop). Each
    // run's outputs appear only when whole (a converted folder or row file renamed into place), so the
    // stop leaves finished runs and nothing else, except a training run's checkpoint, which it resumes from.
    const say = {
      ...STUDY_STOP,
      stopped: `the finished runs are kept in ${path.resolve(a.out)}, and the one cut short left nothing half-written; re-running the same command resumes (an interrupted training run from its last checkpoint); other settings need --force, which starts over (other --variants or --ranks do not)`,
      stoppedTo: "stdout" as const,
    };
    const r = await abortOnStop(say, (signal) => study({ like: a.like, variants: a.variants.split(",").map((v) => v.trim()) as StudyVariant[], ranks: a.ranks?.split(","), data: a.data, tokens: a.tokens, out: a.out, seq: a.seq, batch: a.batch, lr: a.lr, seed: a.seed, gateDim: a["gate-dim"], evalEvery: a["eval-every"], saveEvery: a["save-every"], device: a.device, force: a.force, logger: stderrLogger, progress: process.stderr, signal }));
    if (!r) return;
    for (const row of r.rows) process.stdout.write(`${row.label}: validation NLL ${row.valNll.toFixed(4)}, ${row.kvElemsPerToken} KV elements per token, ${row.decodeTokensPerS.toFixed(1)} decode tokens/s\n`);
    process.stdout.write(`wrote ${r.report} and ${r.html}\n`);
  },
};
