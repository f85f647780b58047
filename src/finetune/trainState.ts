/**
 * The training state, owned in one place on the model's backend: every trainable parameter is a
 * view of one flat float32 buffer (the master weights), and so are its gradient, its two AdamW
 * moments and, in mixed precision, its bf16 copy that the GEMMs read. Gradients are added into their
 * slot in place; the optimizer step is one fused clip + AdamW over the flat buffers; only the loss and
 * the gradient norm reach the host. Nothing here is freed by the garbage collector: activations of a
 * micro-batch live in a backend arena that closes after its backward.
 */
import os from "node:os";
import { MlaError } from "../errors.js";
import type { LlamaModel } from "../model/llama.js";
import type { ModelConfig } from "../model/config.js";
import { expectedTensors } from "../model/weights.js";
import type { ParamNodes } from "../model/params.js";
import { paramNodes, trainableLeaves } from "../model/params.js";
import { Node, Ops, Tape, type SlotFlag } from "../tensor/autograd.js";
import type { Backend, TrainingKernels } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import type { AdamWHyper } from "../backends/native/kernels.js";
import type { StateKind, StateSlots } from "./checkpoint.js";
import { silentLogger, type Logger } from "../util/log.js";

export type Precision = "bf16" | "f32";

export interface Slot {
  path: string;
  offset: number;
  shape: readonly number[];
  size: number;
}

/** Consecutive slots that all take weight decay or all do not. */
interface DecayRun {
  offset: number;
  size: number;
  decay: boolean;
}

/**
 * Matrices (linear weights, embeddings) take AdamW's weight decay; 1-D weights (RMSNorm gains,
 * biases) do not, as in HF's Trainer: decay would pull a norm's gains toward 0, not toward 1.
 * Slots are contiguous in the flat buffers, so each run is one optimizer call over views.
 */
export function decayRuns(slots: readonly Slot[]): DecayRun[] {
  const runs: DecayRun[] = [];
  for (const s of slots) {
    const decay = s.shape.length >= 2;
    const last = runs[runs.length - 1];
    if (last && last.decay === decay && last.offset + last.size === s.offset) last.size += s.size;
    else runs.push({ offset: s.offset, size: s.size, decay });
  }
  return runs;
}

/** Bytes the state needs on the backend: master weights, gradients, two moments, bf16 copy. */
export function stateBytes(params: number, precision: Precision): number {
  return params * (4 + 4 + 8 + (precision === "bf16" ? 2 : 0));
}

/**
 * Rough peak activation bytes of one micro-batch: the tape keeps each op's output, and the backward
 * adds their gradients (one layer at a time when `checkpoint`: then every layer keeps only its input
 * and mid-layer residual sum, and one layer is recomputed with its gradients at once); one chunk of
 * logits and their gradient (all of them with `fullLogits`, which distillation needs).
 */
export function activationBytes(model: { config: ModelConfig }, tokens: number, checkpoint = false, fullLogits = false, precision: Precision = "f32", keepMid = true): number {
  const c = model.config;
  // bf16: a product input is kept rounded (2 bytes) beside its float32 value. Counted for the two
  // normed inputs, the attention output and the MLP's hidden, though the normed inputs and the hidden
  // are now stored in bf16 alone (ProductInputHint): an over-estimate, on the safe side for checkFits.
  const bf16Copies = precision === "bf16" ? (2 * c.hiddenSize + c.heads * c.headDim + c.intermediateSize) / 2 : 0;
  const perLayer = 2 * (10 * c.hiddenSize + 3 * c.intermediateSize + 4 * c.heads * c.headDim) + bf16Copies;
  // A checkpointed layer keeps its input (counted twice, as before the mid-layer sums, for the input
  // gradients in flight) and, with `keepMid`, its mid-layer residual sum (ForwardOptions.checkpointKeepsMid).
  const layers = checkpoint ? c.layers * (keepMid ? 3 : 2) * c.hiddenSize + perLayer : c.layers * perLayer;
  const logitRows = fullLogits ? tokens : Math.min(tokens, lossChunkRows(c.vocabSize));
  return 4 * tokens * layers + 4 * 3 * logitRows * c.vocabSize;
}

function setAt(root: object, path: string, value: unknown): void {
  const keys = path.split(".");
  let o = root as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
  o[keys[keys.length - 1]!] = value;
}

/** Elements of the weights `trainable` selects. */
export function trainableCount(model: LlamaModel, trainable: (path: string) => boolean): number {
  return trainableLeaves(paramNodes(new Ops(model.backend, null), model.weights, trainable)).reduce((n, l) => n + l.node.value.size, 0);
}

export interface MemoryChoice {
  train: "all" | "attention";
  checkpoint: boolean;
  /** Distillation keeps the whole logits (no chunked loss). */
  fullLogits?: boolean;
  /** With checkpoint: keep each layer's mid-layer residual sum (ForwardOptions.checkpointKeepsMid; default true). */
  keepMid?: boolean;
}

/**
 * What the memory estimate reads of the model to train: its config (the activations), the backend its
 * state lives on, its weights' element counts (all, and the attention's: --train all / attention), and
 * the bytes of its weights still to load on that backend (0 once loaded).
 */
export interface TrainingShape {
  config: ModelConfig;
  backend: Backend;
  params: Record<MemoryChoice["train"], number>;
  unloaded: number;
}

const isAttention = (path: string) => path.includes(".attn.");

function shapeOf(m: LlamaModel | TrainingShape): TrainingShape {
  if (!("weights" in m)) return m;
  return { config: m.config, backend: m.backend, params: { all: trainableCount(m, () => true), attention: trainableCount(m, isAttention) }, unloaded: 0 };
}

/**
 * The shape of a model of config `c` not loaded yet (its float32 weights, as training loads them,
 * counted as taken on `backend`): a caller with work before the fine-tune (pipeline) checks its memory
 * before that work, from the config the model will have.
 */
export function configShape(c: ModelConfig, backend: Backend): TrainingShape {
  const params = { all: 0, attention: 0 };
  for (const t of expectedTensors(c)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    params.all += n;
    if (t.name.includes(".self_attn.")) params.attention += n;
  }
  return { config: c, backend, params, unloaded: 4 * params.all };
}

/** Device bytes `choice` needs beyond the float32 weights (which the flat buffers replace). */
function memoryNeed(s: TrainingShape, choice: MemoryChoice, precision: Precision, tokens: number): number {
  const trainable = s.params[choice.train];
  return stateBytes(trainable, precision) - 4 * trainable + activationBytes(s, tokens, choice.checkpoint, choice.fullLogits, precision, choice.keepMid ?? true);
}

/**
 * Free and total bytes where a training state lives: the device's, or for a host backend the
 * machine's, whose `free` (what the kernel could hand out now, page cache included) is only advisory:
 * a host run is refused past `total` (a cgroup's limit where one is set), where it cannot succeed.
 * `free` leaves out the weights not loaded yet.
 */
function memoryFor(s: TrainingShape): { free: number; total: number; host: boolean } {
  const dev = s.backend.memory?.();
  if (dev) return { free: dev.free - s.unloaded, total: dev.total, host: false };
  const limit = process.constrainedMemory?.() ?? 0;
  const total = limit > 0 && limit < os.totalmem() ? limit : os.totalmem();
  return { free: Math.min(os.freemem(), total) - s.unloaded, total, host: true };
}

/** Whether `choice` fits the free memory where the state lives (memoryFor: the device's, or the machine's). */
export function fitsDevice(model: LlamaModel | TrainingShape, choice: MemoryChoice, precision: Precision, tokens: number): boolean {
  const s = shapeOf(model);
  return memoryNeed(s, choice, precision, tokens) <= memoryFor(s).free;
}

/**
 * Refuses, before anything is allocated, a run whose state and activations cannot fit in the
 * device's free memory, saying what would. `shrink`: the caller's own advice where finetune's flags
 * (--train, --checkpoint-activations, --accum) are not its to offer (study); the message then names
 * the precision alone.
 */
export function checkFits(model: LlamaModel | TrainingShape, choice: MemoryChoice, precision: Precision, tokens: number, log: Logger = silentLogger, shrink?: string): void {
  const s = shapeOf(model);
  const mem = memoryFor(s);
  const gib = (x: number) => `${(x / 2 ** 30).toFixed(1)} GiB`;
  const needOf = (c: MemoryChoice) => memoryNeed(s, { ...c, fullLogits: choice.fullLogits }, precision, tokens);
  const need = needOf(choice);
  if (need <= mem.free) return;
  const limit = mem.host ? mem.total : mem.free;
  const weights = s.unloaded ? `the float32 weights it will load (${gib(s.unloaded)})` : "the float32 weights already loaded";
  if (need <= limit) {
    log.warn(`training needs about ${gib(need)} of host memory beyond ${weights}, more than the ${gib(mem.free)} free ${s.unloaded ? "once they are loaded" : "now"} (of ${gib(mem.total)}): it may swap or be killed`);
    return;
  }
  const flags = (c: MemoryChoice) => [`--train ${c.train}`, ...(c.checkpoint ? ["--checkpoint-activations"] : [])].join(" ");
  const alternatives: MemoryChoice[] = [
    { train: choice.train, checkpoint: true },
    { train: "attention", checkpoint: choice.checkpoint },
    { train: "attention", checkpoint: true },
  ];
  // Each alternative only narrows what is trained or adds checkpointing; the first that differs and fits.
  const fits = alternatives.find((c) => (c.train !== choice.train || c.checkpoint !== choice.checkpoint) && needOf(c) <= limit);
  const act = activationBytes(s, tokens, choice.checkpoint, choice.fullLogits, precision, choice.keepMid ?? true);
  const hint =
    shrink ??
    (fits
      ? `${flags(fits)} needs about ${gib(needOf(fits))} and fits`
      : `a smaller --batch or --seq (activations of ${tokens} tokens take ${gib(act)}; --accum keeps the tokens per step)${choice.checkpoint ? "" : " with --checkpoint-activations"}`);
  const n = s.params[choice.train];
  throw new MlaError("OUT_OF_MEMORY", `training ${n.toLocaleString("en-US")} parameters (${shrink ? precision : `${precision}, ${flags(choice)}`}) needs about ${gib(need)} of ${mem.host ? "host" : "device"} memory beyond ${weights} (state ${gib(stateBytes(n, precision))}, activations ${gib(act)}); ${mem.host ? `the machine has ${gib(mem.total)}` : `${gib(mem.free)} are free of ${gib(mem.total)}${s.unloaded ? " once they are loaded" : ""}`}`, hint);
}

/**
 * The run's memory choice, refused (checkFits, with `shrink` its advice where given) where it cannot
 * fit: with checkpointing, each layer's mid-layer sum is kept (a cheaper recompute) unless that is what
 * does not fit.
 */
export function planMemory(model: LlamaModel | TrainingShape, choice: Omit<MemoryChoice, "keepMid">, precision: Precision, tokens: number, log: Logger = silentLogger, shrink?: string): MemoryChoice {
  const s = shapeOf(model);
  const memory: MemoryChoice = { ...choice, keepMid: choice.checkpoint };
  if (choice.checkpoint && !fitsDevice(s, memory, precision, tokens)) memory.keepMid = false;
  checkFits(s, memory, precision, tokens, log, shrink);
  return memory;
}

/** The run's precision (bf16 where the backend has bf16 GEMMs, unless asked), refused where the backend lacks it. */
export function trainingPrecision(asked: Precision | undefined, backend: Backend): Precision {
  const precision = asked ?? (backend.uploadBf16 ? "bf16" : "f32");
  if (precision !== "bf16" && precision !== "f32") throw new MlaError("BAD_ARGUMENT", `--precision ${String(precision)} is not known`, "use bf16 or f32");
  if (precision === "bf16" && !backend.uploadBf16) throw new MlaError("UNSUPPORTED", `--precision bf16 needs a backend with bf16 GEMMs; ${backend.name} has none`, "use --device cuda, or --precision f32");
  return precision;
}

export class TrainState {
  readonly kernels: TrainingKernels;
  readonly params: Tensor;
  /** The gradient slots (see beginStep: a slot not yet reached this step holds the last step's values). */
  readonly grads: Tensor;
  readonly m: Tensor;
  readonly v: Tensor;
  /** bf16 copy of params for the GEMMs (mixed precision), else null. */
  readonly shadow: Tensor | null;
  readonly slots: Slot[];
  /** One per slot: its gradient holds an earlier step's values (see beginStep). */
  private readonly flags: SlotFlag[];
  /** The flat buffers' runs of slots with and without weight decay (decayRuns). */
  private readonly decayRuns: DecayRun[];
  /** The graph's weight nodes: trainable leaves read the flat views (bf16 ones for linear weights in bf16). */
  readonly nodes: ParamNodes;
  step = 0;

  /**
   * Moves the trainable weights of `model` (float32 tensors on its backend) into the flat buffers;
   * the model's own weight fields become views of them, so evaluation and saving see the updates.
   */
  constructor(readonly model: LlamaModel, trainable: (path: string) => boolean, readonly precision: Precision) {
    const b = model.backend;
    if (!b.training) throw new MlaError("UNSUPPORTED", `the ${b.name} backend cannot hold a training state`, "use --device cpu or --device cuda");
    trainingPrecision(precision, b);
    const k = (this.kernels = b.training);
    const leaves = trainableLeaves(paramNodes(new Ops(b, null), model.weights, trainable));
    if (leaves.length === 0) throw new MlaError("BAD_ARGUMENT", "nothing to train: no weight matches --train", "use --train all or --train attention");
    let offset = 0;
    this.slots = leaves.map((l) => {
      const size = l.node.value.size;
      const slot = { path: l.path, offset, shape: l.node.value.shape, size };
      offset += size;
      return slot;
    });
    const total = offset;
    this.params = k.zeros(total, "the float32 master weights");
    leaves.forEach((l, i) => {
      const s = this.slots[i]!;
      // float32 master weights (float64 on the float64 reference backend, the oracle of the gradient tests)
      if (l.node.value.dtype === "bf16") throw new MlaError("BAD_ARGUMENT", `${s.path} is ${l.node.value.dtype}; training needs float32 master weights`, "load the model with weights: \"f32\"");
      k.copyInto(this.params, s.offset, l.node.value);
      const view = k.view(this.params, s.offset, s.shape);
      if (l.node.value !== view) l.node.value.dispose();
      setAt(model.weights, s.path, view); // leaf paths mirror LlamaWeights: layers.3.attn.q
      if (s.path === "embed" && model.weights.lmHead === l.node.value) model.weights.lmHead = view;
    });
    model.weightsChanged();
    this.grads = k.zeros(total, "the gradients");
    this.m = k.zeros(total, "the AdamW first moments");
    this.v = k.zeros(total, "the AdamW second moments");
    this.shadow = precision === "bf16" ? k.zeros(total, "the bf16 weight copy", "bf16") : null;
    if (this.shadow) k.cast(this.params, this.shadow);
    this.flags = this.slots.map(() => ({ stale: false }));
    this.decayRuns = decayRuns(this.slots);
    this.nodes = this.buildNodes(trainable);
  }

  get size(): number {
    return this.params.size;
  }

  /** Frees the flat buffers (masters, gradients, moments, the bf16 copy); the model's trainable weights are views of the masters, so the model goes with it. */
  dispose(): void {
    for (const t of [this.params, this.grads, this.m, this.v, this.shadow]) t?.dispose();
  }

  /**
   * Weight nodes over the model's (now flat) weights. Trainable leaves add their gradient into their
   * slot of `grads`; in bf16, linear weights are read from the bf16 copy, and a tied LM head gets a
   * node of its own (bf16) that shares the embedding's gradient slot.
   */
  private buildNodes(trainable: (path: string) => boolean): ParamNodes {
    const k = this.kernels;
    const b = this.model.backend;
    const ops = new Ops(b, null);
    const P = paramNodes(ops, this.model.weights, trainable);
    const leaves = new Map(trainableLeaves(P).map((l) => [l.path, l.node]));
    const embedSlot = this.slots.find((s) => s.path === "embed");
    this.slots.forEach((s, i) => {
      const grad = k.view(this.grads, s.offset, s.shape);
      const node = leaves.get(s.path)!;
      const isLinear = s.shape.length === 2 && s.path !== "embed";
      const target = this.shadow && isLinear ? ops.param(k.view(this.shadow, s.offset, s.shape), true) : node;
      [target.gradTarget, target.slotFlag] = [grad, this.flags[i]!];
      if (target !== node) setAt(P, s.path, target);
    });
    if (this.shadow && embedSlot && P.lmHead === P.embed) {
      const head = ops.param(k.view(this.shadow, embedSlot.offset, embedSlot.shape), true);
      [head.gradTarget, head.slotFlag] = [P.embed.gradTarget, P.embed.slotFlag];
      P.lmHead = head;
    }
    return P;
  }

  /**
   * The state slot by slot, for checkpoints: each read downloads one weight's master values or
   * moments; each write uploads one (then `loaded()` refreshes the bf16 copy and the model).
   */
  slotIo(): StateSlots {
    const k = this.kernels;
    const b = this.model.backend;
    const buffer = (kind: StateKind) => (kind === "param" ? this.params : kind === "adam_m" ? this.m : this.v);
    const view = (kind: StateKind, i: number) => k.view(buffer(kind), this.slots[i]!.offset, [this.slots[i]!.size]);
    return {
      paths: this.slots.map((s) => s.path),
      sizes: this.slots.map((s) => s.size),
      read: (kind, i) => {
        const v = view(kind, i);
        const a = v.toArray();
        return a instanceof Float32Array ? a : Float32Array.from(a);
      },
      write: (kind, i, data) => {
        const v = view(kind, i);
        if (b.overwrite) b.overwrite(v, data);
        else (v.toArray() as Float32Array).set(data);
      },
    };
  }

  /** After writing the state through slotIo: the bf16 copy and the model's cached constants follow. */
  loaded(): void {
    if (this.shadow) this.kernels.cast(this.params, this.shadow);
    this.model.weightsChanged();
  }

  /**
   * Starts a step's gradients: every slot is marked stale rather than zeroed (its first gradient of
   * the step is written over it; a 7B model's slots are 26 GB to fill and read again per step). Until
   * `update`, a slot no gradient has reached yet still holds the last step's values.
   */
  beginStep(): void {
    for (const f of this.flags) f.stale = true;
  }

  /** Ends a step's gradients: a slot no gradient reached this step (a weight the loss does not depend on) holds zeros. */
  settleGrads(): void {
    this.slots.forEach((s, i) => {
      if (!this.flags[i]!.stale) return;
      const view = this.kernels.view(this.grads, s.offset, [s.size]);
      this.kernels.fillZero(view);
      view.dispose();
      this.flags[i]!.stale = false;
    });
  }

  /** Global gradient norm; then one AdamW step with the gradients clipped to `clip` (0: no clipping). */
  update(lr: number, h: AdamWHyper, clip: number): number {
    this.settleGrads();
    const norm = Math.sqrt(this.kernels.sumSquares(this.grads));
    const scale = clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1;
    this.step++;
    if (Number.isFinite(norm)) {
      const [c1, c2] = [1 - h.beta1 ** this.step, 1 - h.beta2 ** this.step];
      if (h.weightDecay === 0 || this.decayRuns.every((r) => r.decay)) this.kernels.adamw(this.params, this.grads, this.m, this.v, lr, h, c1, c2, scale, this.shadow);
      else {
        const k = this.kernels;
        for (const run of this.decayRuns) {
          const [p, g, m, v] = [this.params, this.grads, this.m, this.v].map((t) => k.view(t, run.offset, [run.size])) as [Tensor, Tensor, Tensor, Tensor];
          const shadow = this.shadow ? k.view(this.shadow, run.offset, [run.size]) : null;
          k.adamw(p, g, m, v, lr, run.decay ? h : { ...h, weightDecay: 0 }, c1, c2, scale, shadow);
          for (const t of [p, g, m, v, shadow]) t?.dispose();
        }
      }
    }
    this.model.weightsChanged();
    return norm;
  }
}

export interface MicroBatch {
  /** B sequences of T inputs each, back to back [B·T], and their next tokens [B·T]. */
  inputs: Int32Array;
  targets: Int32Array;
  sequences: number;
}

/** Rows per logits chunk: about 64M logits (256 MB in float32) whatever the vocabulary. */
export function lossChunkRows(vocab: number): number {
  return Math.max(1, Math.floor(2 ** 26 / vocab));
}

/** Summed cross-entropy of logits [rows, V] and its gradient times `scale` (one pass where the backend fuses them). */
function crossEntropyWithGrad(b: Backend, logits: Tensor, targets: Int32Array, scale: number): { loss: number; grad: Tensor } {
  if (b.crossEntropyFused) {
    const r = b.crossEntropyFused(logits, targets, scale);
    return { loss: r.loss.reduce((a, x) => a + x, 0), grad: r.grad };
  }
  return { loss: b.crossEntropy(logits, targets).reduce((a, x) => a + x, 0), grad: b.crossEntropyBackward(logits, targets, scale) };
}

/**
 * Cross-entropy of the LM head over row chunks of the hidden states h [N, D]: each chunk's logits
 * [rows, V] live only while its loss, its logits gradient and their products are computed, so no
 * [N, V] array exists (8 GB of f32 logits and as much gradient for 16k tokens of a 128k vocabulary).
 * The head's weight gradient goes into its slot; returns the summed loss and dL/dh [N, D].
 */
function chunkedHeadLoss(b: Backend, k: TrainingKernels, h: Tensor, head: Node, targets: Int32Array, scale: number, chunk: number): { loss: number; dh: Tensor } {
  const [N, D] = h.shape as [number, number];
  const dh = k.zeros(N * D, "the hidden-state gradient").reshape([N, D]);
  const dwInto = head.requiresGrad && head.gradTarget ? head.gradTarget.reshape(head.value.shape) : undefined;
  // Where the backend keeps the losses on the device, the step waits for them once, after the last chunk.
  const losses = b.crossEntropyDevice ? k.zeros(N, "the per-token losses") : null;
  const gradDtype = head.value.dtype === "bf16" ? "bf16" : "f32";
  let loss = 0;
  for (let r0 = 0; r0 < N; r0 += chunk) {
    const rows = Math.min(chunk, N - r0);
    const hc = k.view(h, r0 * D, [rows, D]);
    const logits = b.linear(hc, head.value, null);
    const rowTargets = targets.subarray(r0, r0 + rows);
    let grad: Tensor;
    if (losses) grad = b.crossEntropyDevice!(logits, rowTargets, scale, losses, r0, gradDtype);
    else {
      const ce = crossEntropyWithGrad(b, logits, rowTargets, scale);
      [grad, loss] = [ce.grad, loss + ce.loss];
    }
    logits.dispose();
    // dh's rows of this chunk are zeros: a backend that adds dx into them writes them in place.
    const dhc = k.view(dh, r0 * D, [rows, D]);
    const g = b.linearBackward(hc, head.value, grad, { x: true, w: head.requiresGrad, bias: false, dwInto, dwOverwrite: head.slotFlag?.stale, dxInto: dhc });
    if (g.dx) k.copyInto(dh, r0 * D, g.dx);
    if (g.dw) head.accumulate(b, g.dw); // a backend that adds into dwInto returns none
    else if (dwInto && head.slotFlag) head.slotFlag.stale = false;
    for (const x of [grad, g.dx, hc, dhc]) x?.dispose();
  }
  if (losses) {
    for (const x of losses.toArray()) loss += x;
    losses.dispose();
  }
  return { loss, dh };
}

/**
 * Forward and backward of one micro-batch inside a backend arena: the loss gradient (cross-entropy
 * weighted by `ceWeight`, plus distillation from `teacher` weighted by `klWeight`, each summed over
 * tokens and scaled by `scale`) goes into the state's gradient slots (added, or written over a slot
 * the step has not reached yet: TrainState.beginStep). Returns the summed loss.
 * Without a teacher the LM head and the loss run in row chunks (`lossChunk` rows, default
 * lossChunkRows(vocab)); distillation needs the whole logits.
 */
export function microStep(state: TrainState, batch: MicroBatch, o: { scale: number; ceWeight: number; klWeight: number; temperature: number; teacher: LlamaModel | null; checkpoint?: boolean; keepMid?: boolean; lossChunk?: number }): number {
  const b: Backend = state.model.backend;
  const run = () => {
    const tape = new Tape(b);
    const bf16 = state.precision === "bf16";
    const fwd = { sequences: batch.sequences, bf16, checkpoint: o.checkpoint, checkpointKeepsMid: o.keepMid };
    const ops = new Ops(b, tape);
    if (!o.teacher) {
      const h = state.model.hidden(ops, state.nodes, batch.inputs, undefined, fwd);
      const r = chunkedHeadLoss(b, state.kernels, h.value, state.nodes.lmHead, batch.targets, o.ceWeight * o.scale, o.lossChunk ?? lossChunkRows(state.model.config.vocabSize));
      tape.backward(h, r.dh);
      return o.ceWeight * r.loss;
    }
    const logits: Node = state.model.graph(ops, state.nodes, batch.inputs, undefined, fwd);
    const ce = crossEntropyWithGrad(b, logits.value, batch.targets, o.ceWeight * o.scale);
    let loss = o.ceWeight * ce.loss;
    let seed = ce.grad;
    const kl = b.klDivergence(logits.value, o.teacher.forward(batch.inputs, undefined, { sequences: batch.sequences, bf16 }), o.temperature, o.klWeight * o.scale);
    seed = b.add(seed, kl.grad);
    for (const x of kl.loss) loss += o.klWeight * x;
    tape.backward(logits, seed);
    return loss;
  };
  // A step writes no activation after making it: the backend may round each one to bf16 once.
  return b.arena ? b.arena(run, { bf16Inputs: state.precision === "bf16" }) : run();
}
