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
import { Checkpoint, CheckpointWriter, copyModelSideFiles } from "../io/checkpoint.js";
import { DType, encodeFromF32 } from "../io/dtype.js";
import { resolveModel } from "../io/modelDir.js";
import { loadModel, LlamaModel } from "../model/llama.js";
import { DeviceName, selectBackend } from "../backends/select.js";
import { namedTensors } from "../model/weights.js";
import { paramNodes, trainableLeaves } from "../model/params.js";
import { Ops, Tape } from "../tensor/autograd.js";
import { perplexity } from "../eval/perplexity.js";
import { silentLogger, Logger } from "../util/log.js";
import { fmtCount, fmtTime, ProgressSink } from "../util/progress.js";
import { epochOrder, loadTrainingData, sequence } from "./data.js";
import { AdamW, clipGradients } from "./optimizer.js";
import { optimizerKernels } from "../backends/native/kernels.js";
import { lrAt, Schedule, ScheduleName } from "./schedule.js";
import { checkpointDir, loadCheckpoint, saveCheckpoint, TrainState } from "./checkpoint.js";

export interface FinetuneOptions {
  data: string[];
  out: string;
  force?: boolean;
  resume?: boolean;
  /** Token budget (counted as batch·seq per step); default: one epoch. */
  tokens?: number;
  fraction?: number;
  valFraction?: number;
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
  saveEvery?: number;
  /** Compute backend (default auto: CUDA, else the native CPU library, else reference). */
  device?: DeviceName;
  logger?: Logger;
  progress?: ProgressSink | null;
  /** Polled after every step: true = save a checkpoint and stop (SIGINT/SIGTERM in the CLI). */
  shouldStop?: () => boolean;
}

export interface FinetuneResult {
  out: string;
  steps: number;
  stoppedEarly: boolean;
  tokensSeen: number;
  seconds: number;
  tokensPerSecond: number;
  valNllBefore: number | null;
  valNllAfter: number | null;
  finalLoss: number;
}

function positive(name: string, v: number, integer = false): number {
  if (!Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) throw new MlaError("BAD_ARGUMENT", `--${name} ${v} must be a positive ${integer ? "integer" : "number"}`, `pass e.g. --${name} ${integer ? 16 : 0.001}`);
  return v;
}

export async function finetune(spec: string, o: FinetuneOptions): Promise<FinetuneResult> {
  const log = o.logger ?? silentLogger;
  const seq = positive("seq", o.seq ?? 256, true);
  const batch = positive("batch", o.batch ?? 16, true);
  const accum = positive("accum", o.accum ?? 1, true);
  const lr = positive("lr", o.lr ?? 1e-3);
  if (o.tokens !== undefined) positive("tokens", o.tokens, true);
  const warmup = o.warmup ?? 0.05;
  if (!(warmup >= 0 && warmup < 1)) throw new MlaError("BAD_ARGUMENT", `--warmup ${warmup} is outside [0, 1)`, "warmup is a fraction of the steps, e.g. 0.05");
  const trainWhat = o.train ?? "all";
  const distillWeight = o.distill ? (o.distillWeight ?? 0.5) : 0;
  const temperature = positive("temperature", o.temperature ?? 1);
  if (!(distillWeight >= 0 && distillWeight <= 1)) throw new MlaError("BAD_ARGUMENT", `--distill-weight ${distillWeight} is outside [0, 1]`, "0 = cross-entropy only, 1 = distillation only");

  const src = resolveModel(spec);
  const backend = selectBackend(o.device ?? "auto", log);
  const lm = loadModel(spec, { backend, weights: "f32" }); // trainable leaves are float32
  const model = lm.model;
  const data = loadTrainingData(lm.tokenizer, o.data, { valFraction: o.valFraction ?? 0.1, fraction: o.fraction, seq, bos: lm.config.bosTokenId ?? 1, eos: lm.config.eosTokenId });
  const perStep = batch * accum * seq;
  const totalSteps = Math.max(1, Math.ceil((o.tokens ?? data.sequences * seq) / perStep));
  const schedule: Schedule = { name: o.schedule ?? "wsd", lr, warmupSteps: Math.round(warmup * totalSteps), decayFraction: o.decayFraction ?? 0.2, minLrFraction: o.minLrFraction ?? 0.1 };
  const teacher: LlamaModel | null = o.distill ? loadModel(o.distill, { backend }).model : null;
  if (teacher && teacher.config.vocabSize !== lm.config.vocabSize) throw new MlaError("BAD_ARGUMENT", `--distill ${o.distill} has a vocabulary of ${teacher.config.vocabSize}, the student ${lm.config.vocabSize}`, "distill from a model with the same tokenizer (usually the original of the converted model)");

  const settings = { model: fs.readFileSync(path.join(src.dir, "config.json"), "utf8"), data: o.data.map((f) => path.resolve(f)), tokens: o.tokens ?? null, fraction: o.fraction ?? 1, valFraction: o.valFraction ?? 0.1, seq, batch, accum, schedule, beta1: o.beta1 ?? 0.9, beta2: o.beta2 ?? 0.95, eps: o.eps ?? 1e-8, weightDecay: o.weightDecay ?? 0.01, clip: o.clip ?? 1.0, seed: o.seed ?? 0, train: trainWhat, distill: o.distill ?? null, temperature, distillWeight };
  const fingerprint = crypto.createHash("sha256").update(JSON.stringify(settings)).digest("hex").slice(0, 16);

  const out = path.resolve(o.out);
  if (o.resume) {
    if (!fs.existsSync(checkpointDir(out))) throw new MlaError("NOT_FOUND", `--resume: no checkpoint in ${checkpointDir(out)}`, "point --out at the folder of the interrupted run");
  } else {
    if (fs.existsSync(out) && fs.readdirSync(out).length > 0 && !o.force) throw new MlaError("EXISTS", `output ${o.out} already exists`, "pass --resume to continue an interrupted run, --force to start over, or choose another --out");
    if (path.resolve(src.dir) === out) throw new MlaError("BAD_ARGUMENT", `--out ${o.out} is the input model folder`, "choose a new folder; inputs are never modified");
    fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(out, { recursive: true });
  }

  const trainable = (p: string) => trainWhat === "all" || p.includes(".attn.");
  const leafOps = new Ops(model.backend, null);
  const P = paramNodes(leafOps, model.weights, trainable);
  const leaves = trainableLeaves(P);
  const params = leaves.map((l) => l.node.value.toArray());
  // Host backends hand out their storage, so the optimizer updates the weights in place; a device
  // backend hands out copies, which go back after every update.
  const onDevice = leaves.some((l, i) => l.node.value.toArray() !== params[i]);
  const b = model.backend;
  if (onDevice && !b.overwrite) throw new MlaError("UNSUPPORTED", `the ${b.name} backend cannot be trained: its tensors cannot be written in place`, "use --device cpu");
  const pushWeights = () => {
    if (onDevice) leaves.forEach((l, i) => b.overwrite!(l.node.value, params[i] as Float32Array));
  };
  const kernels = optimizerKernels(model.backend);
  const opt = new AdamW({ beta1: settings.beta1, beta2: settings.beta2, eps: settings.eps, weightDecay: settings.weightDecay }, params.map((p) => p.length), kernels);
  let state: TrainState = { format: 1, step: 0, epoch: 0, cursor: 0, tokensSeen: 0, fingerprint, settings: { ...settings, model: src.dir } };
  if (o.resume) {
    state = loadCheckpoint(out, fingerprint, { paths: leaves.map((l) => l.path), params, m: opt.m, v: opt.v });
    opt.step = state.step;
    pushWeights();
    model.weightsChanged();
    log.info(`resuming at step ${state.step}/${totalSteps}`);
  }
  const logFile = path.join(out, "train_log.jsonl");
  const logLine = (row: Record<string, unknown>) => fs.appendFileSync(logFile, JSON.stringify(row) + "\n");
  const valNll = async () => (data.val.length > 0 ? (await perplexity(model, data.val, { ctx: seq, progress: null })).nll : null);
  const valNllBefore = o.resume ? null : await valNll();
  if (valNllBefore !== null) logLine({ step: 0, val_nll: valNllBefore });

  let order = epochOrder(data.sequences, settings.seed, state.epoch);
  const nextSequence = () => {
    if (state.cursor >= data.sequences) {
      state.epoch++;
      state.cursor = 0;
      order = epochOrder(data.sequences, settings.seed, state.epoch);
    }
    return sequence(data, order[state.cursor++]!);
  };
  const save = () => saveCheckpoint(out, state, { paths: leaves.map((l) => l.path), params, m: opt.m, v: opt.v });
  const targetsPerStep = batch * accum * (seq - 1);
  const t0 = performance.now();
  const startStep = state.step;
  let lastPrint = 0;
  let finalLoss = NaN;
  let stoppedEarly = false;
  while (state.step < totalSteps) {
    const rate = lrAt(schedule, state.step, totalSteps);
    for (const l of leaves) l.node.grad = null;
    let lossSum = 0;
    for (let i = 0; i < batch * accum; i++) {
      const s = nextSequence();
      const inputs = s.subarray(0, seq - 1);
      const targets = s.subarray(1);
      const tape = new Tape(b);
      const logits = model.graph(new Ops(b, tape), P, inputs);
      let seed = b.crossEntropyBackward(logits.value, targets, (1 - distillWeight) / targetsPerStep);
      lossSum += (1 - distillWeight) * b.crossEntropy(logits.value, targets).reduce((a, x) => a + x, 0);
      if (teacher) {
        const kl = b.klDivergence(logits.value, teacher.forward(inputs), temperature, distillWeight / targetsPerStep);
        seed = b.add(seed, kl.grad);
        lossSum += distillWeight * kl.loss.reduce((a, x) => a + x, 0);
      }
      tape.backward(logits, seed);
    }
    const loss = lossSum / targetsPerStep;
    const grads = leaves.map((l) => l.node.grad?.toArray() ?? null);
    const norm = clipGradients(grads, settings.clip, kernels);
    if (!Number.isFinite(loss) || !Number.isFinite(norm))
      throw new MlaError("INTERRUPTED", `training diverged at step ${state.step + 1}: loss ${loss}, gradient norm ${norm}`, `the last good checkpoint (if any) is in ${checkpointDir(out)}; lower --lr or check the data`);
    opt.update(params, grads, rate);
    pushWeights();
    model.weightsChanged();
    state.step++;
    state.tokensSeen += perStep;
    finalLoss = loss;
    const elapsed = (performance.now() - t0) / 1000;
    const tps = ((state.step - startStep) * perStep) / elapsed;
    logLine({ step: state.step, loss, lr: rate, grad_norm: norm, tokens: state.tokensSeen, tokens_per_s: tps, elapsed_s: elapsed });
    if (o.evalEvery && state.step % o.evalEvery === 0 && state.step < totalSteps) logLine({ step: state.step, val_nll: await valNll() });
    if (o.saveEvery && state.step % o.saveEvery === 0) save();
    const sink = o.progress === undefined ? process.stderr : o.progress;
    if (sink && (performance.now() - lastPrint > 5000 || state.step === totalSteps)) {
      lastPrint = performance.now();
      sink.write(`step ${state.step}/${totalSteps} loss ${loss.toFixed(4)} lr ${rate.toExponential(2)} |g| ${norm.toFixed(3)} ${fmtCount(tps)} tok/s, ETA ${fmtTime(((totalSteps - state.step) * perStep) / tps)}\n`);
    }
    // Let signal handlers run: the steps themselves never yield to the event loop.
    await new Promise((r) => setImmediate(r));
    if (o.shouldStop?.() && state.step < totalSteps) {
      save();
      stoppedEarly = true;
      log.info(`stopped at step ${state.step}/${totalSteps}; checkpoint saved, continue with --resume`);
      break;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  let valNllAfter: number | null = null;
  if (!stoppedEarly) {
    save();
    valNllAfter = await valNll();
    logLine({ step: state.step, val_nll: valNllAfter });
    await writeModel(src.dir, out, lm.config, model);
    fs.writeFileSync(path.join(out, "finetune.json"), JSON.stringify({ source: spec, settings: { ...settings, model: src.dir }, steps: state.step, tokens: state.tokensSeen, val_nll_before: valNllBefore, val_nll_after: valNllAfter, seconds }, null, 2) + "\n");
  }
  return { out, steps: state.step, stoppedEarly, tokensSeen: state.tokensSeen, seconds, tokensPerSecond: ((state.step - startStep) * perStep) / seconds, valNllBefore, valNllAfter, finalLoss };
}

/** Writes the trained weights (in the source checkpoint's dtypes) and the model files into `out`, each file atomically. */
async function writeModel(srcDir: string, out: string, config: LlamaModel["config"], model: LlamaModel): Promise<void> {
  const src = Checkpoint.open(srcDir);
  const tensors = namedTensors(config, model.weights).map(([name, t]) => ({ name, t, dtype: (src.has(name) ? src.entry(name).dtype : "F32") as DType }));
  src.close();
  const tmp = fs.mkdtempSync(path.join(out, ".model.tmp-"));
  const w = new CheckpointWriter(tmp, tensors.map((x) => ({ name: x.name, dtype: x.dtype, shape: [...x.t.shape] })), { metadata: { format: "pt" } });
  for (const x of tensors) await w.append(encodeFromF32(x.dtype, x.t.toArray()));
  await w.close();
  fs.copyFileSync(path.join(srcDir, "config.json"), path.join(tmp, "config.json"));
  copyModelSideFiles(srcDir, tmp);
  for (const f of fs.readdirSync(tmp)) fs.renameSync(path.join(tmp, f), path.join(out, f));
  fs.rmSync(tmp, { recursive: true, force: true });
}
