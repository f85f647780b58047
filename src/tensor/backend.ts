/**
 * The compute interface (ggml-style): one method per op, implemented by the TypeScript reference
 * backend and, later, by native backends behind the C ABI. Letters in shapes: T time, S key time,
 * D hidden, H query heads, Hkv KV heads, Dh head dim, F MLP width, V vocab, N/K/M generic.
 */
import { MlaError } from "../errors.js";
import { expectShape } from "./tensor.js";
import type { FloatArray, Tensor } from "./tensor.js";

export interface AttentionOptions {
  /** 1/sqrt(Dh) for Llama. */
  scale: number;
  /** Absolute position of query row 0 minus that of key row 0 (keys are the cache prefix + the new rows). */
  queryOffset: number;
  /** Keys more than this many positions behind the query are masked; null = none. */
  window: number | null;
  /**
   * Independent sequences of equal length stacked along the rows (default 1): q [B·T, H, Dh] and
   * k, v [B·S, Hkv, …]; each sequence attends only to its own keys.
   */
  batch?: number;
  /** Mixed precision: GEMM inputs may be rounded to bf16 (f32 accumulation); backends without bf16 ignore it. */
  bf16?: boolean;
}

/**
 * What a backend offers to keep a whole training state on its own memory: flat buffers that
 * parameters, gradients and optimizer moments are views of, one fused AdamW over them, one reduction
 * for the gradient norm. Host backends implement it over typed arrays.
 */
export interface TrainingKernels {
  /** A zero-filled [n] tensor ("bf16" only where the backend keeps bf16 tensors). */
  zeros(n: number, what: string, dtype?: "f32" | "bf16"): Tensor;
  /** Elements [offset, offset + size(shape)) of `flat` as a tensor of `shape`, sharing its memory. */
  view(flat: Tensor, offset: number, shape: readonly number[]): Tensor;
  /** dst[dstOffset …] = src (same dtype). */
  copyInto(dst: Tensor, dstOffset: number, src: Tensor): void;
  /** f32 → bf16 (or back) between tensors of one size. */
  cast(src: Tensor, dst: Tensor): void;
  /** dst += src. */
  addInto(dst: Tensor, src: Tensor): void;
  fillZero(t: Tensor): void;
  /** Σ t² (float64). */
  sumSquares(t: Tensor): number;
  /**
   * One AdamW step in place over flat p, g·gradScale, m, v (same length); c1, c2 are the bias
   * corrections; `shadow` (bf16, same length) receives the updated p when given.
   */
  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, lr: number, h: { beta1: number; beta2: number; eps: number; weightDecay: number }, c1: number, c2: number, gradScale: number, shadow: Tensor | null): void;
}

/**
 * What a training forward of attention leaves for its backward: o [T,H,Dv] and the row log-sum-exp of
 * the softmax, [B·H·T], in the units of the kernel that made it (`kind`, backend-specific: the CUDA
 * backend's fused kernels and cuDNN keep different ones).
 */
export interface AttentionSaved {
  o: Tensor;
  lse: Tensor;
  kind?: number;
}

/**
 * `forProducts`: the caller reads this output only as the x of `linear` (and its backward). Inside a
 * `bf16Inputs` arena a backend may then return it in bf16, the rounding those products apply anyway,
 * instead of float32 plus a rounded copy.
 */
export interface ProductInputHint {
  forProducts?: boolean;
}
/** The hint for an output read only by matrix products. */
export const PRODUCTS: ProductInputHint = Object.freeze({ forProducts: true });

/**
 * The dims of Backend.headLinear's x [T,H,K] and w [G,N,K] (headLinearKN's w [G,K,N] where kMajor), checked
 * (H a multiple of G): every backend's entry check.
 */
export function headLinearDims(x: Tensor, w: Tensor, kMajor = false): { T: number; H: number; K: number; G: number; N: number } {
  const op = kMajor ? "headLinearKN" : "headLinear";
  const [T, H, K] = x.shape as [number, number, number];
  const G = w.shape[0]!;
  const N = w.shape[kMajor ? 2 : 1]!;
  if (x.shape.length !== 3 || !(G >= 1) || H % G !== 0) throw new MlaError("BAD_ARGUMENT", `${op}: x [${x.shape}] needs [T, H, K] with H a multiple of w's ${G} groups`, "this is a bug in the caller");
  expectShape(op, "w", w, kMajor ? [G, K, N] : [G, N, K]);
  return { T, H, K, G, N };
}

/** The dims of Backend.latentAttention's qr [T,H,Dr], kr [S,Hkv,Dr], qc [T,H,L], c [S,L], checked: every backend's entry check. */
export function latentAttentionDims(qr: Tensor, kr: Tensor, qc: Tensor, c: Tensor): { T: number; H: number; Dr: number; S: number; Hkv: number; L: number } {
  const [T, H, Dr] = qr.shape as [number, number, number];
  const [S, Hkv] = kr.shape as [number, number];
  const L = c.shape[c.shape.length - 1]!;
  expectShape("latentAttention", "kr", kr, [S, Hkv, Dr]);
  expectShape("latentAttention", "qc", qc, [T, H, L]);
  expectShape("latentAttention", "c", c, [S, L]);
  return { T, H, Dr, S, Hkv, L };
}

/**
 * One decode step of B sequences, each against its own cache. positions[b] is the new query's
 * position in sequence b; its cache holds keys for rows 0 … positions[b] (the new token's included)
 * and may hold more rows (spare capacity), which are ignored.
 */
export interface DecodeBatchOptions {
  scale: number;
  positions: Int32Array;
  /** Keys more than this many positions behind the query are masked; null = none. */
  window: number | null;
}

/**
 * The dims of a batched decode, checked: queries `q` [B, H, Dq] with B = positions.length, and for
 * each named cache part its per-sequence tensors [≥ positions[b] + 1, …rest], rest equal across b.
 * Returns B, H and each part's rest.
 */
export function decodeBatchDims(op: string, q: Tensor, parts: Record<string, readonly Tensor[]>, opts: DecodeBatchOptions): { B: number; H: number; rest: Record<string, readonly number[]> } {
  const B = opts.positions.length;
  const H = q.shape[1]!;
  if (q.shape.length !== 3 || q.shape[0] !== B)
    throw new MlaError("BAD_ARGUMENT", `${op}: queries [${q.shape}] for ${B} positions`, "pass queries [B, H, D], one row per sequence, in the order of positions");
  const rest: Record<string, readonly number[]> = {};
  for (const [name, ts] of Object.entries(parts)) {
    if (ts.length !== B) throw new MlaError("BAD_ARGUMENT", `${op}: ${ts.length} ${name} caches for ${B} sequences`, "pass one cache per sequence, in the order of positions");
    const r = ts[0]?.shape.slice(1) ?? [];
    ts.forEach((t, b) => {
      const need = opts.positions[b]! + 1;
      if (t.shape[0]! < need || t.shape.length !== r.length + 1 || t.shape.slice(1).some((d, i) => d !== r[i]))
        throw new MlaError("BAD_ARGUMENT", `${op}: ${name} cache ${b} is [${t.shape}], expected [≥ ${need}, ${r}]`, "append the new token's row before attending (the cache must reach the query's position)");
    });
    rest[name] = r;
  }
  return { B, H, rest };
}

/** The dims of Backend.attentionDecodeBatch's q [B,H,Dh], k[b] [≥S_b,Hkv,Dh], v[b] [≥S_b,Hkv,Dv], checked: every backend's entry check. */
export function attentionDecodeBatchDims(q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): { B: number; H: number; Hkv: number; Dh: number; Dv: number } {
  const { B, H, rest } = decodeBatchDims("attentionDecodeBatch", q, { k, v }, opts);
  const [Hkv, Dh] = rest["k"] as [number, number];
  const [Gv, Dv] = rest["v"] as [number, number];
  if (Dh !== q.shape[2] || Gv !== Hkv || !(Hkv >= 1) || H % Hkv !== 0)
    throw new MlaError("BAD_ARGUMENT", `attentionDecodeBatch: q [${q.shape}] with keys [S, ${Hkv}, ${Dh}] and values [S, ${Gv}, ${Dv}]`, "keys and values need the same KV heads, a divisor of H, and keys the query's head dim");
  return { B, H, Hkv, Dh, Dv };
}

/** The dims of Backend.latentAttentionDecodeBatch's qr [B,H,Dr], kr[b] [≥S_b,Hkv,Dr], qc [B,H,L], c[b] [≥S_b,L], checked: every backend's entry check. */
export function latentAttentionDecodeBatchDims(qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions): { B: number; H: number; Hkv: number; Dr: number; L: number } {
  const { B, H, rest } = decodeBatchDims("latentAttentionDecodeBatch", qc, { kr, c }, opts);
  const [Hkv, Dr] = rest["kr"] as [number, number];
  const [L] = rest["c"] as [number];
  expectShape("latentAttentionDecodeBatch", "qr", qr, [B, H, Dr]);
  if (qc.shape[2] !== L || !(Hkv >= 1) || H % Hkv !== 0)
    throw new MlaError("BAD_ARGUMENT", `latentAttentionDecodeBatch: qc [${qc.shape}] with latents [S, ${L}] and rope keys [S, ${Hkv}, ${Dr}]`, "the latent query needs the latent width, and the rope keys' heads must divide H");
  return { B, H, Hkv, Dr, L };
}

/**
 * AttentionOptions.window checked, in the native kernels' encoding (0: no window). A window must be a
 * whole number of keys ≥ 1: 0 masked every key on the reference backend while the native kernels
 * read it as "none", and a fraction indexed keys between rows.
 */
export function attentionWindow(op: string, window: number | null): number {
  if (window === null) return 0;
  if (!(Number.isInteger(window) && window >= 1))
    throw new MlaError("BAD_ARGUMENT", `${op}: a sliding window of ${window} keys`, "a window is a whole number of keys ≥ 1 (null: full attention); check the config's sliding_window");
  return window;
}

/** The keys query row t may attend to, as an inclusive range [lo, hi] of S cached rows (causal, sliding window). */
export function visibleKeys(t: number, S: number, opts: AttentionOptions): [number, number] {
  const qpos = t + opts.queryOffset;
  return [opts.window === null ? 0 : Math.max(0, qpos - opts.window + 1), Math.min(S - 1, qpos)];
}

/** See Backend.arena. */
export interface ArenaOptions<T> {
  bf16Inputs?: boolean;
  keep?: (result: T) => readonly Tensor[];
}

/** Which gradients Backend.linearBackward computes, and where it may put them. */
export interface LinearBackwardNeed {
  x: boolean;
  w: boolean;
  bias: boolean;
  dwInto?: Tensor;
  dwOverwrite?: boolean;
  dxInto?: Tensor;
}

/** A recorded decode step (Backend.captureStep). */
export interface StepGraph {
  /** Runs the step again for the next token ids and positions [B] (the batch it was recorded for). */
  launch(ids: Int32Array, positions: Int32Array): void;
  /** Frees the graph and its outputs (the tensors its capture returned). */
  dispose(): void;
}

/** Calibration's reductions on a backend that has them (Backend.calibration). */
export interface CalibrationKernels {
  /** acc[heads, Dh/2] += mean over T of each RoPE pair's L2 norm in y[T, heads, Dh] (a tensor of this backend). */
  pairNorms(y: Tensor, T: number, heads: number, Dh: number, acc: Float64Array): void;
  /** acc[D,D] upper triangle += xᵀx for x[T,D] (null: the TypeScript loop on the downloaded x). */
  covariance: ((x: Float32Array, T: number, D: number, acc: Float64Array) => void) | null;
}

export interface Backend {
  readonly name: string;
  upload(data: FloatArray, shape: readonly number[]): Tensor;
  download(t: Tensor): FloatArray;
  free(t: Tensor): void;
  /**
   * A weight stored as bf16 (half the memory and bandwidth), from bf16 `bits` [numel(shape)] (raw
   * checkpoint bytes as uint16). Only backends with bf16 kernels offer it; such a tensor may be used
   * as `linear`'s and `headLinear`'s w, as `embedding`'s table (a tied LM head's weight is the
   * embedding) and downloaded, nothing else.
   */
  uploadBf16?(bits: Uint16Array, shape: readonly number[]): Tensor;
  /**
   * Calibration's reductions (2-norm pair scores, activation covariance) in the backend's own code,
   * where it has them; absent: the callers' TypeScript loops over downloaded activations.
   */
  readonly calibration?: CalibrationKernels;
  /**
   * Replaces t's values in place with `data` [t.size]. Backends whose `download` returns a copy
   * (device memory) need it so that host-side updates (the optimizer's) reach the tensor; host
   * backends hand out their own storage and do not.
   */
  overwrite?(t: Tensor, data: Float32Array): void;

  /** Attention takes `batch` > 1 in one call; without it the caller splits the sequences. */
  readonly batchedAttention?: boolean;
  /** Flat training state on this backend (see TrainingKernels). */
  readonly training?: TrainingKernels;
  /**
   * Runs fn; every tensor this backend allocates meanwhile is freed when it returns (a step arena),
   * so device memory never waits for the garbage collector. Results must be downloaded inside.
   * `bf16Inputs`: fn never writes a tensor after making it (a training step's activations), so the
   * backend may keep each one's bf16 rounding for all the bf16 products that read it.
   * `keep`: the tensors of fn's result that outlive it (an arena nested in a step: a layer's
   * attention block frees its q, k, v and heads' output as soon as the block's output exists, and
   * the output itself joins the enclosing arena).
   */
  arena?<T>(fn: () => T, opts?: ArenaOptions<T>): T;
  /**
   * Runs fn outside every open arena: what it allocates lives until disposed (or collected), however
   * deep in arenas the call is. For tensors built lazily on first use and kept (a layer's absorbed
   * matrices), which a forward running in an arena would otherwise free under their owner.
   */
  persistent?<T>(fn: () => T): T;
  /**
   * Records `run` (one decode step of B sequences: token ids and positions [B]) once as a replayable
   * graph, and runs it; the tensors `run` returns are the graph's outputs, refreshed in place by
   * every launch (CUDA graphs; see DecodeSession). Throws an MlaError when some op of the step cannot
   * be recorded, with nothing left open.
   */
  captureStep?<T>(ids: Int32Array, positions: Int32Array, run: () => T): { result: T; graph: StepGraph };
  /**
   * The route choices the backend reads from its environment as it runs (which kernel a product or a
   * decode attention takes), as one string. A recorded step keeps the routes it was recorded with, so
   * DecodeSession records again when this changes. Throws an MlaError for a value no route takes.
   */
  routes?(): string;
  /** Device memory in bytes: held by this backend's buffers, their peak, free and total on the device. */
  memory?(): { live: number; peak: number; free: number; total: number };
  /** Starts a new peak for memory(). */
  resetPeak?(): void;
  /** Milliseconds the host has spent blocked waiting for the device so far (a device backend's downloads and syncs). */
  hostWaitMs?(): number;
  /** crossEntropy and crossEntropyBackward in one pass over the logits. */
  crossEntropyFused?(logits: Tensor, targets: Int32Array, scale: number): { loss: Float64Array; grad: Tensor };
  /**
   * As crossEntropyFused, but each row's loss stays on the device, in `losses` (f32) from element
   * `offset`, so a training step need not wait for it; the gradient is stored as `gradDtype` (bf16 when
   * a bf16 product reads it next, which would round it so anyway). linearBackward takes such a dy.
   */
  crossEntropyDevice?(logits: Tensor, targets: Int32Array, scale: number, losses: Tensor, offset: number, gradDtype: "f32" | "bf16"): Tensor;
  /**
   * Per row of logits [T, V]: the log-softmax of targets[t] (NaN where it is −1) and the `top` (≤ 20)
   * most likely ids with theirs, ties to the lower id: a scored prompt's numbers without bringing its
   * rows to the host (where absent, the rows are downloaded and scored there).
   */
  rowLogprobs?(logits: Tensor, targets: Int32Array, top: number): { logprob: Float32Array; topIds: Int32Array; topLogprobs: Float32Array };
  /**
   * Each row's arg-max of logits [T, V] (greedy decoding's next tokens) as pickToken takes it: the
   * first id of the largest value, NaN and −∞ never taken, −1 where a row holds nothing else. T ids
   * come to the host instead of T·V logits (8 × 32k float32 is 1 MB a decode step); where absent, the
   * rows are downloaded.
   */
  rowArgmax?(logits: Tensor): Int32Array;

  /** y[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]). */
  linear(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor;
  /**
   * linear of one x against several weights (a layer's projections of one normed input), in one launch
   * where the backend can (decode's few rows): the same results as one linear each. Absent: callers
   * use linearMany() below, which makes one linear call per weight. `hints[i]` for output i: see ProductInputHint.
   */
  linearMany?(x: Tensor, ws: readonly Tensor[], biases: readonly (Tensor | null | undefined)[], hints?: readonly (ProductInputHint | undefined)[]): Tensor[];
  /** y[M,D] = x / rms(x) · w[D]; `hint.forProducts`: see ProductInputHint. */
  rmsnorm(x: Tensor, w: Tensor, eps: number, hint?: ProductInputHint): Tensor;
  /**
   * Rotate-half RoPE on x[T, H, Dh] at `positions[T]`. Only the first `rotaryDims` (default Dh) dims
   * of each head rotate, as pairs (i, i + rotaryDims/2); the rest pass through. `invFreq` is
   * [rotaryDims/2] shared by every head, or [H, rotaryDims/2] per head (MLA's per-head index sets).
   */
  rope(x: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor;
  /** Concatenation along the last axis: a[…, A], b[…, B] → […, A+B]. */
  concatLast(a: Tensor, b: Tensor): Tensor;
  /**
   * MLA attention on the latent cache (up-projections absorbed): scores =
   * (qr·kr + qc·c)·scale with qr[T,H,Dr], kr[S,Hkv,Dr], qc[T,H,L], c[S,L]; returns the
   * attention-weighted latents [T,H,L]. Causal/window masking as in `attention`.
   */
  latentAttention(qr: Tensor, kr: Tensor, qc: Tensor, c: Tensor, opts: AttentionOptions): Tensor;
  /**
   * How many times a multiply-add of `latentAttention` for several queries (T > 1) costs one of the
   * products and `attention` (default 1; Infinity: never, as on CUDA). MLA weighs it when a prompt
   * chunk meets a filled cache: the absorbed form attends in the latent dims, the plain one
   * up-projects the cache (absorbedCheaper).
   */
  readonly latentAttentionCost?: number;
  /** Causal GQA attention: q[T,H,Dh], k[S,Hkv,Dh], v[S,Hkv,Dv] → [T,H,Dv]. */
  attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor;
  /**
   * `attention` for one new token of each of B sequences, each over its own cache (decodeBatchDims):
   * q [B,H,Dh], k[b] [≥S_b,Hkv,Dh], v[b] [≥S_b,Hkv,Dv] with S_b = positions[b] + 1 → [B,H,Dv].
   * One call per layer, so a backend can run the whole batch in a few launches.
   */
  attentionDecodeBatch(q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): Tensor;
  /**
   * `latentAttention` for one new token of each of B sequences: qr [B,H,Dr], kr[b] [≥S_b,Hkv,Dr], qc [B,H,L], c[b] [≥S_b,L] → [B,H,L].
   * With `hint` PRODUCTS the output may come back bf16 (see ProductInputHint).
   */
  latentAttentionDecodeBatch(qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions, hint?: ProductInputHint): Tensor;
  /**
   * `attention` when a backward will follow: also returns what the backend's attentionBackward can
   * reuse (the output and the softmax statistics), or saved null where it keeps nothing.
   */
  attentionForTraining?(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): { o: Tensor; saved: AttentionSaved | null };
  /**
   * Per-head products with weights shared by groups of heads: x [T,H,K], w [G,N,K] (H a multiple of
   * G) → y [T,H,N], y[t,h] = w[h / (H/G)]·x[t,h]. MLA's run-time absorption: the query's nope part
   * through its KV group's key up-projection, the latent output through its value up-projection.
   * `hint.forProducts`: see ProductInputHint.
   */
  headLinear(x: Tensor, w: Tensor, hint?: ProductInputHint): Tensor;
  /**
   * headLinear with w stored k-major, [G,K,N]: y[t,h] = x[t,h]·w[h / (H/G)]. MLA's key up-projection is
   * stored that way ([G·Dn, L]); a decode step's few rows read it in place instead of through a
   * transposed copy (K = Dn is short, so the row-per-column products idle). Absent: callers keep the
   * transpose for headLinear.
   */
  headLinearKN?(x: Tensor, w: Tensor, hint?: ProductInputHint): Tensor;
  /** silu(gate) ⊙ up, both [M,F]. */
  swiglu(gate: Tensor, up: Tensor, hint?: ProductInputHint): Tensor;
  /** a + b, same shape. */
  add(a: Tensor, b: Tensor): Tensor;
  /** Rows of table[V,D] at ids[T] → [T,D]. */
  embedding(table: Tensor, ids: Int32Array): Tensor;
  /** Per row of logits[T,V]: −log softmax(logits)[target] (float64). */
  crossEntropy(logits: Tensor, targets: Int32Array): Float64Array;

  /** Columns of x[M,N] at idx[K] → [M,K]. */
  gatherCols(x: Tensor, idx: Int32Array): Tensor;

  // ---- backward ops (training); each returns the gradients of the forward op's inputs ----

  /**
   * linear: dx[M,K] = dy·w, dw[N,K] = dyᵀ·x, db[N] = Σ dy (each only when asked). With `dwInto` a
   * backend may add dw into that tensor [N,K] instead and return dw null (with `dwOverwrite`, write
   * dw over its stale contents instead of adding), and with `dxInto` (x's size) add dx into it and
   * return dx null (callers handle both).
   */
  linearBackward(x: Tensor, w: Tensor, dy: Tensor, need: LinearBackwardNeed): { dx: Tensor | null; dw: Tensor | null; db: Tensor | null };
  rmsnormBackward(x: Tensor, w: Tensor, eps: number, dy: Tensor): { dx: Tensor; dw: Tensor };
  /** RoPE is a rotation: its backward rotates dy by the opposite angle. */
  ropeBackward(dy: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor;
  /** `saved`: what `attentionForTraining` returned for these inputs, so the backward need not recompute it. */
  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, opts: AttentionOptions, saved?: AttentionSaved): { dq: Tensor; dk: Tensor; dv: Tensor };
  /** `hint.forProducts`: only bf16 products read dgate and dup (see ProductInputHint). */
  swigluBackward(gate: Tensor, up: Tensor, dy: Tensor, hint?: ProductInputHint): { dgate: Tensor; dup: Tensor };
  /** dtable[V,D]: rows of dy[T,D] added at ids. */
  embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor;
  /** d(scale·Σ crossEntropy)/dlogits = scale·(softmax − onehot). */
  crossEntropyBackward(logits: Tensor, targets: Int32Array, scale: number): Tensor;
  /**
   * Distillation: per row T²·KL(softmax(teacher/T) ‖ softmax(student/T)) and the gradient of
   * scale·Σ rows with respect to the student logits, scale·T·(softmax(student/T) − softmax(teacher/T)).
   */
  klDivergence(student: Tensor, teacher: Tensor, temperature: number, scale: number): { loss: Float64Array; grad: Tensor };
  /** Scatter-add of dy[M,K] into the columns idx of a zero [M,N]. */
  scatterCols(dy: Tensor, idx: Int32Array, n: number): Tensor;
  /** [a[…,A], b[…,B]] ← x[…,A+B]. */
  splitLast(x: Tensor, a: number): [Tensor, Tensor];
  /** x·s. */
  scale(x: Tensor, s: number): Tensor;
}

/** x [M, K] · each ws[i] [N_i, K]ᵀ (+ biases[i]): through the backend's linearMany where it has one, else one linear each. */
export function linearMany(b: Backend, x: Tensor, ws: readonly Tensor[], biases: readonly (Tensor | null | undefined)[] = [], hints: readonly (ProductInputHint | undefined)[] = []): Tensor[] {
  return b.linearMany ? b.linearMany(x, ws, biases, hints) : ws.map((w, i) => b.linear(x, w, biases[i] ?? null));
}
