import { DEVICE_OPTION } from "./deviceOption.js";
import type { CommandModule } from "yargs";
import { checkFinetuneRun, FINETUNE_DEFAULTS as D, finetune, type FinetuneOptions } from "../finetune/trainer.js";
import { checkLaunch, launchRanks } from "../finetune/launch.js";
import { cudaLibraryAbsent } from "../backends/native/cuda.js";
import { joinRun, rankFromEnv } from "../finetune/joinRun.js";
import { MlaError } from "../errors.js";
import { parseSchedule, SCHEDULES } from "../finetune/schedule.js";
import { stderrLogger, type Logger } from "../util/log.js";
import { emitJson, summaryWriter } from "./output.js";
import { gracefulStop } from "./signals.js";

import type { DeviceName } from "../backends/select.js";
import { countOf } from "../util/counts.js";

interface Args {
  model: string;
  data: string[];
  "token-cache"?: string;
  out: string;
  force: boolean;
  resume: boolean;
  tokens?: number;
  fraction?: number;
  "val-fraction": number;
  "val-tokens"?: number;
  seq: number;
  batch: number;
  accum: number;
  lr?: number;
  warmup: number;
  schedule: string;
  "decay-fraction"?: number;
  "weight-decay": number;
  clip: number;
  seed: number;
  train: "attention" | "all";
  distill?: string;
  temperature?: number;
  "distill-weight"?: number;
  "eval-every"?: number;
  "save-every"?: number;
  "save-every-minutes"?: number;
  json?: string;
  device: DeviceName;
  precision?: "bf16" | "f32";
  "checkpoint-activations": boolean;
  gpus?: number;
  nnodes?: number;
  "node-rank"?: number;
  master?: string;
}

export const finetuneCommand: CommandModule<object, Args> = {
  command: "finetune <model>",
  describe: "recover quality by continued training (AdamW, warmup + 1−sqrt decay, optional distillation); resumable",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "the (converted) model to train" })
      .option("data", { type: "string", array: true, demandOption: true, describe: "text files, .jsonl with a text field, or an .xz of either (decompressed in memory by the xz tool)" })
      .option("token-cache", { type: "string", describe: "folder of its own (apart from MODEL, --data, --out and the working folder) where the tokenized --data is kept and reused by later runs (tokenize a large corpus once)" })
      .option("out", { type: "string", demandOption: true, describe: "run folder: checkpoint/, train_log.jsonl, then the trained model" })
      .option("force", { type: "boolean", default: false, describe: "start over in an existing --out" })
      .option("resume", { type: "boolean", default: false, describe: "continue the interrupted run in --out exactly, with the same flags (a finished run is reported again, nothing rewritten)" })
      .option("tokens", { type: "number", describe: "token budget (batch·accum·seq per step, rounded up to whole steps; default one epoch)" })
      .option("fraction", { type: "number", describe: "train on the first fraction of the training tokens" })
      .option("val-fraction", { type: "number", default: D.valFraction, describe: "held-out tail of the data for validation NLL" })
      .option("val-tokens", { type: "number", describe: "score only the first N tokens of the held-out tail at each validation, e.g. 100k (default: all of it)" })
      .option("seq", { type: "number", default: D.seq, describe: "sequence length, BOS included" })
      .option("batch", { type: "number", default: D.batch, describe: "sequences per micro-batch (--accum micro-batches per step; split among the GPUs with --gpus)" })
      .option("accum", { type: "number", default: D.accum, describe: "gradient accumulation steps" })
      .option("lr", { type: "number", describe: "peak learning rate (default by model size: 1e-3 under 10M parameters, 2e-4 under 100M, else 1e-4)" })
      .option("warmup", { type: "number", default: D.warmup, describe: "warmup as a fraction of the steps" })
      .option("schedule", { type: "string", default: D.schedule, choices: SCHEDULES as unknown as string[], describe: "wsd = warmup, constant, 1−sqrt decay (the paper's)" })
      .option("decay-fraction", { type: "number", describe: `wsd: fraction of the steps spent decaying, after warmup (default ${D.decayFraction})` })
      .option("weight-decay", { type: "number", default: D.weightDecay, describe: "AdamW weight decay, on matrices only (not norm gains or biases, as HF's Trainer)" })
      .option("clip", { type: "number", default: D.clip, describe: "global gradient-norm clip (0 = off)" })
      .option("seed", { type: "number", default: D.seed, describe: "seed of the order the training sequences are visited in (reshuffled every epoch)" })
      .option("train", { choices: ["attention", "all"] as const, default: D.train, describe: "which weights to train" })
      .option("distill", { type: "string", describe: "teacher model (e.g. the original) for KL distillation" })
      // No yargs defaults: with --distill they default in finetune(); without it, one given is refused.
      .option("temperature", { type: "number", describe: `with --distill: the softmax temperature of teacher and student (default ${D.temperature})` })
      .option("distill-weight", { type: "number", describe: `with --distill: weight of the KL term, the rest is cross-entropy (default ${D.distillWeight})` })
      .option("eval-every", { type: "number", describe: "validation NLL every N steps (0 or unset: before and after training only)" })
      .option("save-every", { type: "number", describe: "checkpoint every N steps (0 or unset: only when the run is stopped, and at its end)" })
      .option("save-every-minutes", { type: "number", describe: "also checkpoint after every M minutes of training, so a hard kill (kill -9, a lost GPU lease) loses at most that much (0 or unset: none by time)" })
      .option("device", DEVICE_OPTION)
      .option("precision", { choices: ["bf16", "f32"] as const, describe: "bf16: bf16 GEMMs with f32 master weights and optimizer (default on CUDA); f32: float32 throughout (default elsewhere)" })
      .option("checkpoint-activations", { type: "boolean", default: false, describe: "recompute each layer in the backward instead of keeping its activations (less memory, ~1/3 more compute)" })
      .option("gpus", { type: "number", describe: "train data-parallel on this many GPUs of this machine, one process each (NCCL); --batch is split among them, so the steps are the same on any number" })
      .option("nnodes", { type: "number", describe: "with --gpus: machines of the run (the same command on each, with its --node-rank)" })
      .option("node-rank", { type: "number", describe: "with --nnodes: this machine's place, 0 … nnodes − 1" })
      .option("master", { type: "string", describe: "with --nnodes: HOST:PORT of node 0, where the ranks meet" })
      .option("json", { type: "string", describe: "write the result summary as JSON to FILE (no value: stdout)" }),
  handler: async (a) => {
    const place = rankFromEnv();
    if (!place && (a.gpus !== undefined || a.nnodes !== undefined || a["node-rank"] !== undefined || a.master !== undefined)) return launch(a);
    const lead = !place || place.rank === 0;
    // The other ranks' info lines would repeat rank 0's; their warnings and errors come through, prefixed.
    const logger: Logger = lead ? stderrLogger : { info: () => {}, warn: (m) => stderrLogger.warn(m) };
    const say = lead ? summaryWriter(a.json) : () => {};
    const stop = gracefulStop();
    let collective: Awaited<ReturnType<typeof joinRun>> | undefined;
    try {
      collective = place ? await joinRun(place, logger) : undefined;
      const r = await finetune(a.model, { ...optionsOf(a), device: place ? "cuda" : a.device, logger, progress: lead ? process.stderr : null, shouldStop: stop.requested, collective });
      const nll = (x: number | null) => (x === null ? "–" : x.toFixed(4));
      const s = r.sitting;
      // A resumed run's figures are the run's, over its sittings; this sitting's follow.
      const sitting = s.steps === r.steps ? "" : ` (this sitting, resumed at step ${r.steps - s.steps}: ${countOf(s.steps, "step")} in ${s.seconds.toFixed(1)} s, ${Math.round(s.tokensPerSecond)} tok/s)`;
      say(
        r.stoppedEarly
          ? r.checkpointStep === null
            ? r.steps === 0
              ? `stopped before the first training step: nothing was trained, so there is nothing to resume; running the same command again starts over\n`
              : `stopped at step ${r.steps} without a checkpoint (no disk room for it): this run cannot be resumed\n`
            : `stopped at step ${r.steps}; checkpoint of step ${r.checkpointStep} in ${r.out}/checkpoint (continue with --resume)\n`
          : `trained ${r.steps} step${r.steps === 1 ? "" : "s"} (${r.tokensSeen} tokens) in ${r.seconds.toFixed(1)} s, ${Math.round(r.tokensPerSecond)} tok/s${sitting}; validation NLL ${nll(r.valNllBefore)} → ${nll(r.valNllAfter)}; model in ${r.out}\n`,
      );
      if (a.json !== undefined && lead) emitJson(a.json, r);
      if (r.stoppedEarly) process.exitCode = 130;
    } finally {
      collective?.close();
      stop.release();
    }
  },
};

/** The run's options from the command line (the logger, progress and stop are the caller's). */
function optionsOf(a: Args): FinetuneOptions {
  return {
    data: a.data,
    tokenCache: a["token-cache"],
    out: a.out,
    force: a.force,
    resume: a.resume,
    tokens: a.tokens,
    fraction: a.fraction,
    valFraction: a["val-fraction"],
    valTokens: a["val-tokens"],
    seq: a.seq,
    batch: a.batch,
    accum: a.accum,
    lr: a.lr,
    warmup: a.warmup,
    schedule: parseSchedule(a.schedule),
    decayFraction: a["decay-fraction"],
    weightDecay: a["weight-decay"],
    clip: a.clip,
    seed: a.seed,
    train: a.train,
    distill: a.distill,
    temperature: a.temperature,
    distillWeight: a["distill-weight"],
    evalEvery: a["eval-every"],
    saveEvery: a["save-every"],
    saveEveryMinutes: a["save-every-minutes"],
    device: a.device,
    precision: a.precision,
    checkpointActivations: a["checkpoint-activations"],
  };
}

/** `--gpus N`: checks the run once, then starts a rank per GPU (each this command again) and waits for them. */
async function launch(a: Args): Promise<void> {
  if (a.gpus === undefined) throw new MlaError("BAD_ARGUMENT", `${a.nnodes !== undefined ? "--nnodes" : a["node-rank"] !== undefined ? "--node-rank" : "--master"} without --gpus`, "pass --gpus N, the GPUs of this machine to train on");
  if (a.device !== "auto" && a.device !== "cuda") throw new MlaError("BAD_ARGUMENT", `--gpus runs one process per GPU; --device ${a.device} has none`, "drop --device, or pass --device cuda");
  checkLaunch({ gpus: a.gpus, nnodes: a.nnodes, nodeRank: a["node-rank"], master: a.master }, a.batch);
  // Each rank would load the CUDA library and fail on its own: say it once, before starting any. (The
  // launcher does not load it: that would hold a context on GPU 0 beside rank 0's for the whole run.)
  const absent = cudaLibraryAbsent();
  if (absent) throw new MlaError("UNSUPPORTED", `--gpus ${a.gpus} runs on the CUDA backend, which cannot load here: ${absent}`, "build it with `npm run build:native` on a machine with nvcc and the cuBLAS/cuSOLVER headers, or drop --gpus");
  checkFinetuneRun(a.model, optionsOf(a));
  const run = await launchRanks({ gpus: a.gpus, nnodes: a.nnodes, nodeRank: a["node-rank"], master: a.master, log: stderrLogger });
  const stop = gracefulStop(undefined, () => run.stop());
  try {
    process.exitCode = await run.done;
  } finally {
    stop.release();
  }
}
