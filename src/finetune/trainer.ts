/**
 * `finetune`: recover what conversion lost by continued training (cross-entropy, optionally mixed
 * with distillation from a teacher), AdamW, warmup + 1−sqrt decay, gradient clipping and
 * accumulation, periodic validation, atomic resumable checkpoints, a JSONL log, and a loadable
 * model in the output folder at the end.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { Checkpoint } from "../io/checkpoint.js";
import { resolveModel } from "../io/modelDir.js";
import { loadModel, LlamaModel } from "../model/llama.js";
import { DeviceName, selectBackend } from "../backends/select.js";
import { namedTensors } from "../model/weights.js";
import { pastPositionsWarning, type ModelConfig } from "../model/config.js";
import { perplexity, requireBos } from "../eval/perplexity.js";
import { silentLogger, Logger } from "../util/log.js";
import { StepTimer } from "./stepTimer.js";
import { fmtCount, fmtTime, ProgressSink } from "../util/progress.js";
import { checkDataFile, loadTrainingData, microBatches } from "./data.js";
import { activationBytes, MemoryChoice, MicroBatch, microStep, planMemory, Precision, stateBytes, trainableCount, trainingPrecision, TrainState } from "./trainState.js";
import { defaultLr, lrAt, Schedule, ScheduleName } from "./schedule.js";
import { checkpointDir, loadCheckpoint, readCheckpointState, TrainState as RunState } from "./checkpoint.js";
import { checkRunFolders, startRunFolder } from "./runFolder.js";
import { checkFinetuneOptions, checkTeacher, FINETUNE_DEFAULTS, FINETUNE_KINDS } from "./options.js";
import { checkOptionTypes } from "../util/optionTypes.js";
import { nextTurn, throwIfAborted } from "../util/abort.js";
import { checkSameFlags, checkSameRun, finishedRun, LOG_FILE, loggedLossAt, loggedSeconds, loggedValNllAt, loggedValNllBefore, SUMMARY_FILE, trimLogToCheckpoint } from "./resume.js";
import { writeFileAtomic } from "../io/atomicDir.js";
import { withOutLock } from "../io/outLock.js";
import { roundToWritten, writeModel } from "./writtenModel.js";
import { CheckpointKeeper } from "./checkpointKeeper.js";
import { weightFileBytes } from "../io/diskRoom.js";
import { notify, type FinetuneCallbacks } from "./events.js";
import { barrier, checkBatchSplits, rankRows, rankWindows, type Collective } from "./collective.js";
import { countOf } from "../util/counts.js";

export interface FinetuneOptions extends FinetuneCallbacks {
  data: string[];
  /** Folder where each data file's token stream is kept and reused by later runs (tokenized once; see tokenCache.ts). */
  tokenCache?: string;
  out: string;
  force?: boolean;
  resume?: boolean;
  /** Token budget (counted as batch·accum·seq per step, rounded up to whole steps); default: one epoch. */
  tokens?: number;
  fraction?: number;
  valFraction?: number;
  /**
   * Tokens of the held-out tail each validation scores, the tail's first N (default: all of it). The
   * tail is a fraction of the data: on a large corpus, far more than a short fine-tune trains on.
   */
  valTokens?: number;
  seq?: number;
  batch?: number;
  accum?: number;
  lr?: number;
  /** Warmup as a fraction of the steps. */
  warmup?: number;
  schedule?: ScheduleName;
  decayFraction?: number;
  minLrFraction?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  clip?: number;
  seed?: number;
  train?: "attention" | "all";
  distill?: string;
  temperature?: number;
  distillWeight?: number;
  evalEvery?: number;
  /** A checkpoint after every this many steps (0 or unset: none but at a stop and at the end). */
  saveEvery?: number;
  /**
   * A checkpoint after the first step that ends at least this many minutes after this sitting's
   * last one (or its start), besides saveEvery's (0 or unset: none). Bounds the work a hard kill
   * (kill -9, a lost machine) loses in time, whatever a step takes on this hardware; `study` saves
   * this way by default.
   */
  saveEveryMinutes?: number;
  /** Compute backend (default auto: CUDA, else the native CPU library, else reference). */
  device?: DeviceName;
  /**
   * bf16: GEMM inputs (weights, activations, attention) in bf16 with f32 accumulation, f32 master
   * weights, gradients and optimizer state; f32: float32 throughout. Default: bf16 where the backend
   * has bf16 GEMMs (CUDA), else f32.
   */
  precision?: Precision;
  /** Recompute each layer in the backward instead of keeping its activations (about one layer's worth in memory). */
  checkpointActivations?: boolean;
  logger?: Logger;
  progress?: ProgressSink | null;
  /**
   * Polled after every step: true = save a checkpoint and stop (SIGINT/SIGTERM in the CLI). Also
   * polled between pieces of tokenizing the data and windows of the validation before training: a
   * stop there ends the run before its first step (of this call), with nothing saved or written. And
   * between windows of the periodic (--eval-every) and final validations: a stop there ends the
   * validation, unlogged, and the run as a stop after that step does (a checkpoint of it, resumable;
   * the resumed run does that validation again, then goes on).
   */
  shouldStop?: () => boolean;
  /**
   * Aborting it stops the run as shouldStop does (a checkpoint is saved after the step, the result
   * says stoppedEarly and `resume: true` continues; before the first step nothing is written), rather
   * than with an error, so the steps done are kept. One aborted before the call throws MlaError
   * INTERRUPTED, as convert and evaluate do.
   */
  signal?: AbortSignal;
  /**
   * Data parallelism: this process is rank `collective.rank` of `collective.world` (`finetune --gpus N`
   * starts one per GPU). `batch` stays the micro-batch over all ranks: each trains batch / world of its
   * sequences and the ranks sum their gradients and losses before every update, so a run takes the same
   * steps on any number of GPUs, and resumes on another number. Rank 0 alone writes the run folder; a
   * stop is agreed at the end of a step (the other ranks stop only then, never inside a validation).
   */
  collective?: Collective;
}

export { FINETUNE_DEFAULTS };

export interface FinetuneResult {
  out: string;
  /** Steps of the run so far, earlier sittings included (0: stopped before the first one). */
  steps: number;
  stoppedEarly: boolean;
  /** The step of the training checkpoint in OUT/checkpoint at the end (null: none; stopped before the first step, or the disk had no room). */
  checkpointStep: number | null;
  tokensSeen: number;
  /** Training seconds (the steps and periodic validation) over all the run's sittings, as an uninterrupted run reports them. */
  seconds: number;
  /** tokensSeen / seconds. */
  tokensPerSecond: number;
  /** This call's own part: the same as the run's unless it resumed a checkpoint. */
  sitting: { steps: number; seconds: number; tokensPerSecond: number };
  valNllBefore: number | null;
  valNllAfter: number | null;
  finalLoss: number;
  precision: Precision;
}

/** Tokens per second, 0 before any time has passed. */
const perSecond = (tokens: number, seconds: number) => (seconds > 0 ? tokens / seconds : 0);

/** Elements of every tensor of the checkpoint in `dir` (from the safetensors headers; nothing is read). */
export function parameterCount(dir: string): number {
  const ck = Checkpoint.open(dir);
  try {
    return ck.names().reduce((n, name) => n + ck.entry(name).shape.reduce((a, b) => a * b, 1), 0);
  } finally {
    ck.close();
  }
}

/** Steps a token budget trains: whole steps of `perStep` tokens, the budget rounded up (at least one). */
export const stepsFor = (tokens: number, perStep: number) => Math.max(1, Math.ceil(tokens / perStep));

/**
 * The checks finetune() makes before any work (options, the model folder, --out and the --data files;
 * then, once the options' types are known good, a signal aborted already), for a launcher to make once
 * before it starts a process per GPU that would each make them. Returns the options' values, the model
 * and --out (absolute).
 */
export function checkFinetuneRun(spec: string, o: FinetuneOptions) {
  checkOptionTypes("finetune()", o, FINETUNE_KINDS, ["data", "out"]);
  throwIfAborted(o.signal);
  const options = checkFinetuneOptions(o);
  checkBatchSplits(options.batch, o.collective?.world ?? 1);
  const src = resolveModel(spec);
  const out = checkRunFolders(o, src.dir);
  for (const f of o.data) checkDataFile(f);
  return { ...options, src, out };
}

/** The end-of-text id (null: none) of the model in `dir`, which goes between documents: one past the vocabulary would reach the embedding as a token. */
export function checkEndOfText(c: ModelConfig, dir: string): number | null {
  const V = c.vocabSize, eos = c.eosTokenId;
  if (eos !== null && eos >= V) throw new MlaError("BAD_CONFIG", `${path.join(dir, "config.json")}: "eos_token_id" is ${eos}, past the ${V}-token vocabulary; fine-tuning puts it between documents`, `set it to the tokenizer's end-of-text id (0 to ${V - 1}), or to null to join documents without one`);
  return eos;
}

export async function finetune(spec: string, o: FinetuneOptions): Promise<FinetuneResult> {
  const checked = checkFinetuneRun(spec, o);
  // Rank 0 alone writes the run folder, so it alone (or a run on its own) locks it, for the whole run:
  // from before --resume reads the checkpoint to after the model is written. The other ranks only read
  // it, before rank 0 changes anything (the barrier below); `finetune --gpus`'s launcher takes no lock.
  if (o.collective && o.collective.rank !== 0) return train(spec, o, checked);
  return withOutLock(o.out, { command: "finetune", log: o.logger ?? silentLogger, create: !o.resume }, () => train(spec, o, checked));
}

async function train(spec: string, o: FinetuneOptions, checked: ReturnType<typeof checkFinetuneRun>): Promise<FinetuneResult> {
  const { seq, batch, accum, warmup, trainWhat, distillWeight, temperature, src, out } = checked;
  const log = o.logger ?? silentLogger;
  const D = FINETUNE_DEFAULTS;
  const dp = o.collective ?? null;
  const world = dp?.world ?? 1;
  const lead = !dp || dp.rank === 0;
  // The sequences of a micro-batch this rank trains on (its activations are what memory must hold).
  const rankBatch = batch / world;
  const prior = o.resume ? readCheckpointState(out) : null;
  const priorSeconds = prior ? prior.seconds ?? loggedSeconds(out, prior.step) : 0;
  const lr = o.lr ?? defaultLr(parameterCount(src.dir));
  if (o.lr === undefined) log.info(`learning rate ${lr} (the default for a model of this size; --lr to choose)`);
  const backend = selectBackend(o.device ?? "auto", log);
  // Refused before the data is tokenized and --out made (minutes on a corpus), not when the state is.
  const precision = trainingPrecision(o.precision, backend);
  // The run's flags (its settings below but MODEL's config.json and the warmup steps the data gives): on
  // --resume, one other than the run's is refused now, not once the data is tokenized (minutes on a corpus).
  const flags = { data: o.data.map((f) => path.resolve(f)), tokens: o.tokens ?? null, fraction: o.fraction ?? 1, valFraction: o.valFraction ?? D.valFraction, seq, batch, accum, schedule: { name: o.schedule ?? D.schedule, lr, decayFraction: o.decayFraction ?? D.decayFraction, minLrFraction: o.minLrFraction ?? D.minLrFraction }, beta1: o.beta1 ?? D.beta1, beta2: o.beta2 ?? D.beta2, eps: o.eps ?? D.eps, weightDecay: o.weightDecay ?? D.weightDecay, clip: o.clip ?? D.clip, seed: o.seed ?? D.seed, train: trainWhat, distill: o.distill ?? null, temperature, distillWeight, precision, ...(o.valTokens === undefined ? {} : { valTokens: o.valTokens }) };
  if (prior) checkSameFlags(out, prior, { ...flags, warmup });
  const lm = loadModel(spec, { backend, weights: "f32" }); // trainable leaves are float32
  const model = lm.model;
  // The models and the training state go back to the backend when the call ends, however it ends (a
  // pipeline evaluates next in the same process; on a GPU they would otherwise wait for the collector).
  const owned: { dispose(): void }[] = [model];
  try {
    const past = pastPositionsWarning("--seq", seq, lm.config.maxPositions, "it trains on positions it was not pretrained for (RoPE extrapolates)");
    if (past) log.warn(past);
    // Refused before the data is tokenized (minutes on a corpus) and --out made: every training
    // sequence starts with BOS (any id taken instead would be some other token), EOS goes between the
    // documents, and the teacher's config and tokenizer.json are all checkTeacher reads.
    const bos = requireBos(lm.config.bosTokenId, lm.dir);
    const eos = checkEndOfText(lm.config, lm.dir);
    if (o.distill) checkTeacher(o.distill, lm.config.vocabSize, src.dir);
    const teacher: LlamaModel | null = o.distill ? loadModel(o.distill, { backend }).model : null;
    if (teacher) owned.push(teacher);
    // The teacher's targets past its own positions are extrapolated too, and the KL term pulls toward them.
    const teacherPast = teacher && pastPositionsWarning("--seq", seq, teacher.config.maxPositions, "its targets past them are extrapolated (RoPE), and the KL term pulls the student toward them", "the --distill teacher's");
    if (teacherPast) log.warn(teacherPast);
    // The state and activations are checked against free memory (the teacher's weights already taken)
    // before the data is tokenized too.
    const checkpoint = o.checkpointActivations ?? false;
    const memory = planMemory(model, { train: trainWhat, checkpoint, fullLogits: teacher !== null }, precision, rankBatch * (seq - 1), log);

    // Before the first step (tokenizing a corpus, the first validation: minutes) a stop is polled
    // between pieces and windows, and ends the run there: no step has run in this call, so there is
    // nothing to save, and a fresh run leaves its --out as it found it (emptied by --force at most).
    let stopped = false; // once asked, stays asked (shouldStop is not polled again for the same stop)
    const askedHere = () => (stopped ||= o.shouldStop?.() === true || o.signal?.aborted === true);
    // Data parallel: rank 0 stops where it is asked to (and the launcher then ends the others); the other
    // ranks stop only with the step-end agreement below, so they never end a run rank 0 goes on with.
    const stopAsked = lead ? askedHere : () => false;
    const STOPPED = Symbol("stopped");
    const unlessStopped = async <T>(work: () => Promise<T>): Promise<T | typeof STOPPED> => {
      try {
        return await work();
      } catch (e) {
        if (e instanceof MlaError && e.code === "INTERRUPTED" && stopAsked()) return STOPPED;
        throw e;
      }
    };
    let madeOut = false; // this call created --out (a fresh run)
    const stoppedBeforeTraining = (during: string): FinetuneResult => {
      if (madeOut) fs.rmdirSync(out); // empty: nothing is written before the first validation ends
      log.info(prior ? `stopped while ${during}, before training resumed; the step-${prior.step} checkpoint is kept in ${checkpointDir(out)}` : `stopped while ${during}, before the first training step: nothing was trained, so there is nothing to resume (running it again starts over)`);
      const tokensSeen = prior?.tokensSeen ?? 0;
      return { out, steps: prior?.step ?? 0, stoppedEarly: true, checkpointStep: prior?.step ?? null, tokensSeen, seconds: priorSeconds, tokensPerSecond: perSecond(tokensSeen, priorSeconds), sitting: { steps: 0, seconds: 0, tokensPerSecond: 0 }, valNllBefore: prior ? loggedValNllBefore(out) : null, valNllAfter: null, finalLoss: NaN, precision };
    };

    const data = await unlessStopped(() => loadTrainingData(lm.tokenizer, o.data, { valFraction: o.valFraction ?? D.valFraction, fraction: o.fraction, seq, bos, eos, vocab: { size: lm.config.vocabSize, dir: lm.dir }, cacheDir: o.tokenCache, logger: log, shouldStop: stopAsked }));
    if (data === STOPPED) return stoppedBeforeTraining("tokenizing the --data files");
    const perStep = batch * accum * seq;
    const totalSteps = stepsFor(o.tokens ?? data.sequences * seq, perStep);
    // A step then holds one sequence several times: the tokens counted are not that many distinct ones.
    if (data.sequences < batch * accum && !prior)
      log.warn(`the training part holds ${data.sequences} sequence${data.sequences === 1 ? "" : "s"} of ${seq} tokens, fewer than a step's ${batch * accum} (--batch ${batch}${accum === 1 ? "" : ` × --accum ${accum}`}): each step repeats them, and the tokens reported count the repeats; pass more --data, or a smaller --batch or --seq`);
    // A step takes batch·accum·seq tokens: a budget between two step counts is rounded up (10 tokens train one whole step of 4096).
    if (o.tokens !== undefined && o.tokens !== totalSteps * perStep && !prior)
      log.info(`--tokens ${o.tokens} is ${o.tokens < perStep ? "less than one step" : `${(o.tokens / perStep).toFixed(2)} steps`} of ${perStep} tokens (--batch ${batch}${accum === 1 ? "" : ` × --accum ${accum}`} × --seq ${seq}): training ${totalSteps} step${totalSteps === 1 ? "" : "s"}, ${totalSteps * perStep} tokens`);
    // Each validation scores this (the held-out tail, or its first --val-tokens).
    const val = o.valTokens === undefined ? data.val : data.val.subarray(0, o.valTokens);
    // Two validations (more with --eval-every) of a tail larger than the training itself: on a corpus, most of the run.
    if (o.valTokens === undefined && val.length > totalSteps * perStep && !prior)
      log.info(`each validation scores the ${countOf(val.length, "token")} held out (--val-fraction ${flags.valFraction}), more than the ${totalSteps * perStep} trained on; --val-tokens N scores only the first N`);
    const { name, decayFraction, minLrFraction } = flags.schedule;
    const schedule: Schedule = { name, lr, warmupSteps: Math.round(warmup * totalSteps), decayFraction, minLrFraction };

    // The fingerprint's JSON keeps this key order (the schedule in the flags' place), which older checkpoints hold.
    const settings = { model: fs.readFileSync(path.join(src.dir, "config.json"), "utf8"), ...flags, schedule };
    const fingerprint = crypto.createHash("sha256").update(JSON.stringify(settings)).digest("hex").slice(0, 16);
    // What the run records (not fingerprinted, so older checkpoints still resume): the model's folder
    // for its config's text, the --warmup fraction beside the steps it gives, for checkSameRun's message,
    // and the tokens the --data files hold, which checkSameRun compares.
    const recorded = { ...settings, model: path.resolve(src.dir), warmup, dataTokens: [data.train.length, data.val.length] };
    if (prior) {
      checkSameRun(out, prior, fingerprint, recorded);
      const finished = finishedRun(out, prior.step);
      if (finished) {
        log.info(`the run in ${out} has finished (step ${finished.steps}); nothing to resume`);
        return finished;
      }
    }
    // Every rank has read the run folder before rank 0 changes it.
    if (dp) await barrier(dp);
    if (prior && lead) {
      const dropped = trimLogToCheckpoint(out, prior.step, totalSteps);
      if (dropped > 0) log.info(`${LOG_FILE}: dropped ${dropped} line(s) written after the step-${prior.step} checkpoint (the run was cut off after saving it); they are written again`);
    } else if (!prior && lead) {
      madeOut = !fs.existsSync(out);
      startRunFolder(out);
    }

    const trainable = (p: string) => trainWhat === "all" || p.includes(".attn.");
    const b = model.backend;
    b.resetPeak?.();
    // Checked before the state is allocated; a resumed run already has a checkpoint on the disk.
    const keeper = new CheckpointKeeper(out, trainableCount(model, trainable), weightFileBytes(src.dir), log, o.resume ?? false);
    if (lead) keeper.checkAtStart(o.saveEvery);
    const state = new TrainState(model, trainable, precision);
    owned.push(state);
    log.info(memoryPlan(state, rankBatch * (seq - 1), memory) + (world > 1 ? ` on each of ${world} GPUs (${rankBatch} of the ${batch} sequences of a micro-batch each)` : ""));
    const hyper = { beta1: settings.beta1, beta2: settings.beta2, eps: settings.eps, weightDecay: settings.weightDecay };
    const run: RunState = prior ?? { format: 1, step: 0, epoch: 0, cursor: 0, tokensSeen: 0, fingerprint, settings: recorded };
    if (prior) {
      loadCheckpoint(out, state.slotIo());
      state.loaded();
      state.step = run.step;
      keeper.step = run.step;
      log.info(`resuming at step ${run.step}/${totalSteps}`);
    }
    const logFile = path.join(out, LOG_FILE);
    const logLine = (row: Record<string, unknown>) => lead && fs.appendFileSync(logFile, JSON.stringify(row) + "\n");
    // The validations before and after training show their progress (a large --val-fraction takes
    // minutes); the periodic ones (--eval-every) would interleave with the step lines.
    // Every validation stops at its next window when a stop is asked (or before its first): STOPPED, and nothing is logged.
    // Data parallel: each rank scores its share of the windows, and the ranks sum their tokens' NLL.
    const valNll = async (shown: boolean) =>
      stopAsked()
        ? STOPPED
        : await unlessStopped(async () => {
            if (val.length === 0) return null;
            const part = dp ? rankWindows(val, seq - 1, dp.rank, world) : val;
            const r = part.length > 0 ? await perplexity(model, part, { ctx: seq, progress: shown ? o.progress : null, label: "validation", shouldStop: stopAsked }) : null;
            if (!dp) return r!.nll;
            const [nllSum, tokens] = await dp.allReduceHost(Float64Array.of(r ? r.nll * r.tokens : 0, r?.tokens ?? 0));
            return nllSum! / tokens!;
          });
    let valNllBefore: number | null;
    if (prior) valNllBefore = loggedValNllBefore(out);
    else {
      await nextTurn(); // a stop asked for while the model and the state were set up (no turn ran)
      const v = await valNll(true);
      if (v === STOPPED) return stoppedBeforeTraining(val.length > 0 ? "measuring the validation NLL before training" : "setting up the training");
      valNllBefore = v;
      // Before its line is written: a throw leaves --out as a stop here does (stoppedBeforeTraining).
      if (v !== null) await notify(o.onValidation, { when: "before", step: 0, steps: totalSteps, valNll: v }, () => stoppedBeforeTraining("reporting the validation NLL before training (onValidation threw)"));
      if (v !== null) logLine({ step: 0, val_nll: v });
    }

    // Every rank draws the whole micro-batch (the data order does not depend on the GPU count) and trains its rows.
    const drawMicroBatch: () => MicroBatch = microBatches(data, batch, settings.seed, run);
    const nextMicroBatch = () => rankRows(drawMicroBatch(), dp?.rank ?? 0, world);
    const t0 = performance.now();
    let lastSave = t0; // the time-based checkpoints (saveEveryMinutes) count from this sitting's start, then from each save
    const saveDue = (step: number) => (!!o.saveEvery && step % o.saveEvery === 0) || (!!o.saveEveryMinutes && performance.now() - lastSave >= o.saveEveryMinutes * 60_000);
    const startStep = run.step;
    // The run's time spans its sittings: a resumed run goes on from its checkpoint's.
    const sittingSeconds = () => (performance.now() - t0) / 1000;
    // Device memory peaks per sitting (a resumed process starts counting afresh): the run's is the most of its sittings'.
    const peakBytes = () => {
      const now = model.backend.memory?.().peak;
      return now === undefined ? (prior?.peakDeviceBytes ?? null) : Math.max(now, prior?.peakDeviceBytes ?? 0);
    };
    const save = (what: string, seconds = priorSeconds + sittingSeconds()) => {
      // The checkpoint of this step is in place already (--save-every met the last step, or a stop):
      // a 7B run's would be ~84 GB written again. Data parallel: the ranks hold the same state; rank 0 writes it.
      if (keeper.step === run.step || !lead) return;
      const peak = peakBytes();
      return keeper.save(Object.assign(run, { seconds }, peak === null ? {} : { peakDeviceBytes: peak }), state.slotIo(), what);
    };
    const targetsPerStep = batch * accum * (seq - 1);
    const loss = { scale: 1 / targetsPerStep, ceWeight: 1 - distillWeight, klWeight: distillWeight, temperature, teacher, checkpoint, keepMid: memory.keepMid };
    let lastPrint = -Infinity; // the first step prints (performance.now() counts from the process start)
    // The loss of the last step trained; a run resumed at its last step trains none and takes its logged one.
    let finalLoss = prior ? (loggedLossAt(out, run.step) ?? NaN) : NaN;
    let stoppedEarly = false;
    const timer = new StepTimer(model.backend);
    // A stop after step run.step, or during a validation after it (periodic or final): the checkpoint of
    // that step, whole (never one of a step half done), from which --resume goes on.
    const stopAt = (during: string, seconds?: number) => {
      stoppedEarly = true;
      save(`step-${run.step}`, seconds);
      log.info(`stopped at step ${run.step}/${totalSteps}${during}; ${keeper.step === null ? "no checkpoint (no disk room): this run cannot be resumed" : `the step-${keeper.step} checkpoint is kept in ${checkpointDir(out)}`}`);
    };
    const evalDue = (step: number) => !!o.evalEvery && step % o.evalEvery === 0 && step < totalSteps;
    // The periodic validation after step run.step (--eval-every), logged; false when a stop cut it short (nothing logged).
    const periodicVal = async (): Promise<boolean> => {
      const v = await valNll(false);
      if (v === STOPPED) return false;
      logLine({ step: run.step, val_nll: v });
      if (v !== null) await notify(o.onValidation, { when: "periodic", step: run.step, steps: totalSteps, valNll: v }, () => stopAt(", its onValidation callback threw"));
      return true;
    };
    // A run stopped during the periodic validation after its checkpoint's step does that validation first.
    if (prior && evalDue(run.step) && !loggedValNllAt(out, run.step) && !(await periodicVal())) stopAt(", during its validation");
    while (!stoppedEarly && run.step < totalSteps) {
      timer.start();
      const rate = lrAt(schedule, run.step, totalSteps);
      state.beginStep();
      let lossSum = 0;
      for (let i = 0; i < accum; i++) lossSum += microStep(state, nextMicroBatch(), loss);
      let stopAgreed = false;
      if (dp) {
        // The update below then sees the gradient of the whole step on every rank (slots no gradient reached hold zeros).
        state.settleGrads();
        await dp.allReduceSum(state.grads);
        const [total, stops] = await dp.allReduceHost(Float64Array.of(lossSum, askedHere() ? 1 : 0));
        lossSum = total!;
        stopAgreed = stops! > 0;
      }
      const stepLoss = lossSum / targetsPerStep;
      const norm = state.update(rate, hyper, settings.clip);
      if (!Number.isFinite(stepLoss) || !Number.isFinite(norm))
        throw new MlaError("INTERRUPTED", `training diverged at step ${run.step + 1}: loss ${stepLoss}, gradient norm ${norm}`, `the last good checkpoint (if any) is in ${checkpointDir(out)}; lower --lr or check the data`);
      run.step++;
      run.tokensSeen += perStep;
      finalLoss = stepLoss;
      const { stepMs, hostMs } = timer.stop();
      const inSitting = sittingSeconds();
      const elapsed = priorSeconds + inSitting;
      logLine({ step: run.step, loss: stepLoss, lr: rate, grad_norm: norm, tokens: run.tokensSeen, tokens_per_s: perSecond(run.tokensSeen, elapsed), elapsed_s: elapsed, step_ms: stepMs, host_ms: hostMs });
      await notify(o.onStep, { step: run.step, steps: totalSteps, tokens: run.tokensSeen, loss: stepLoss, lr: rate, gradNorm: norm, tokensPerSecond: perSecond(run.tokensSeen, elapsed), elapsedSeconds: elapsed }, () => stopAt(", its onStep callback threw"));
      // A stop during it is seen below (stopAsked stays true): the step's checkpoint, without its validation.
      if (evalDue(run.step)) await periodicVal();
      if (saveDue(run.step)) {
        save(`step-${run.step}`);
        lastSave = performance.now(); // a save skipped for disk room is not retried at every step either
      }
      const sink = o.progress;
      if (sink && (performance.now() - lastPrint > 5000 || run.step === totalSteps)) {
        lastPrint = performance.now();
        // This sitting's rate: the speed now, for the time left.
        const tps = perSecond((run.step - startStep) * perStep, inSitting);
        sink.write(`step ${run.step}/${totalSteps} loss ${stepLoss.toFixed(4)} lr ${rate.toExponential(2)} |g| ${norm.toFixed(3)} ${fmtCount(tps)} tok/s, ETA ${fmtTime(((totalSteps - run.step) * perStep) / tps)}\n`);
      }
      // Let signal handlers run: the steps themselves never yield to the event loop.
      await new Promise((r) => setImmediate(r));
      if ((dp ? stopAgreed : stopAsked()) && run.step < totalSteps) {
        stopAt("");
        break;
      }
    }
    const sittingTime = sittingSeconds();
    const seconds = priorSeconds + sittingTime;
    const hostLine = timer.describe();
    if (hostLine) log.info(hostLine);
    let valNllAfter: number | null = null;
    const tokensPerSecond = perSecond(run.tokensSeen, seconds);
    const sitting = { steps: run.step - startStep, seconds: sittingTime, tokensPerSecond: perSecond((run.step - startStep) * perStep, sittingTime) };
    if (!stoppedEarly) {
      // The reported NLL is the written model's: the masters rounded to the source's dtype (bf16: ~1e-3
      // nats off the masters'). Rounded in place, so the final checkpoint below holds them rounded too;
      // nothing trains on from it (a finished run is only reported), and rounding again is a no-op, so
      // an end redone from it, or from the last step's --save-every checkpoint, gives the same model and NLL.
      if (roundToWritten(src.dir, model) > 0) state.loaded();
      // A stop during the validation saves the last step's checkpoint (its masters rounded, the same end
      // as the final one's): --resume redoes the end from it.
      const v = await valNll(true);
      if (v === STOPPED) stopAt(", during the final validation", seconds);
      else valNllAfter = v;
      // Before the model is written: a throw leaves the last step's checkpoint, from which --resume ends the run.
      if (v !== STOPPED && v !== null) await notify(o.onValidation, { when: "final", step: run.step, steps: totalSteps, valNll: v }, () => stopAt(", its onValidation callback threw", seconds));
    }
    if (!stoppedEarly && lead) {
      logLine({ step: run.step, val_nll: valNllAfter });
      await writeModel(src.dir, out, model);
      // Last of the run's files (then the final checkpoint), and whole: its presence means finished (finishedRun, the pipeline).
      writeFileAtomic(path.join(out, SUMMARY_FILE), JSON.stringify({ source: spec, settings: recorded, steps: run.step, tokens: run.tokensSeen, precision, checkpoint_activations: checkpoint, params: modelParams(model), trainable_params: state.size, peak_device_bytes: peakBytes(), val_nll_before: valNllBefore, val_nll_after: valNllAfter, final_loss: finalLoss, seconds, tokens_per_s: tokensPerSecond, sitting: { steps: sitting.steps, seconds: sitting.seconds, tokens_per_s: sitting.tokensPerSecond, peak_device_bytes: model.backend.memory?.().peak ?? null, host_time_per_step: timer.summary(), gpus: world } }, null, 2) + "\n");
      save("final", seconds);
    }
    return { out, steps: run.step, stoppedEarly, checkpointStep: keeper.step, tokensSeen: run.tokensSeen, seconds, tokensPerSecond, sitting, valNllBefore, valNllAfter, finalLoss, precision };
  } finally {
    for (const x of owned.reverse()) x.dispose();
  }
}

/** One line: what the training state and a micro-batch's activations take, beside what the device has. */
function memoryPlan(state: TrainState, tokens: number, m: MemoryChoice): string {
  const gib = (x: number) => `${(x / 2 ** 30).toFixed(2)} GiB`;
  const n = state.size;
  const parts = [`weights ${gib(4 * n)}`, `gradients ${gib(4 * n)}`, `AdamW ${gib(8 * n)}`, ...(state.shadow ? [`bf16 copy ${gib(2 * n)}`] : [])];
  return `memory plan: ${n.toLocaleString("en-US")} trainable parameters (${state.precision}): ${parts.join(", ")} = ${gib(stateBytes(n, state.precision))}; activations of ${tokens} tokens${m.checkpoint ? ` (checkpointed per layer; the recompute skips ${m.keepMid ? "o_proj and down" : "down only: no room to keep the mid-layer sums"})` : ""} ≈ ${gib(activationBytes(state.model, tokens, m.checkpoint, m.fullLogits, state.precision, m.keepMid))}`;
}

/** Every weight's element count (a tied LM head once). */
function modelParams(model: LlamaModel): number {
  return [...new Set(namedTensors(model.config, model.weights).map(([, t]) => t))].reduce((n, t) => n + t.size, 0);
}
