/**
 * One layer's MHA → MLA factorization. Inputs are the original key/value projections (PyTorch
 * [out, in] layout); outputs are the MLA tensors of docs/formats.md:
 *   k_rope [Hkv·2R, D]   rows of W_k that keep RoPE, per KV head [x-part R, y-part R]
 *   kv_down [L, D]       the latent projection (L = rank·Hkv joint, 2·rank·Hkv split)
 *   k_up [Hkv·(Dh−2R), L], v_up [Hkv·Dh, L]
 * Biases move exactly: b_k's rope rows to k_rope, its other rows to k_up, b_v to v_up (the down
 * projection has none).
 */
import { chosenLinalg } from "../backends/native/linalg.js";
import { headDimOrder } from "../model/config.js";
import { nextTurn } from "../util/abort.js";
import { CovarianceRoots, Factors, checkRoots, energyOf, matmul, truncatedFactorAsync, whitenedFactor } from "../svd/truncated.js";
import { MlaError } from "../errors.js";
import { checkFloatsArg, checkHeadDimArg, checkObjectArg, checkWholeArg, shown } from "../util/numericArgs.js";

export interface LayerFactorInput {
  /** [Hkv·Dh, D] */
  wk: Float32Array;
  /** [Hkv·Dh, D] */
  wv: Float32Array;
  bk: Float32Array | null;
  bv: Float32Array | null;
  kvHeads: number;
  headDim: number;
  hidden: number;
  /** [Hkv] → R kept pairs. */
  selection: number[][];
  rank: number;
  svd: "joint" | "split";
  /** Roots of the attention-input covariance for activation-aware SVD; null = plain weight SVD. */
  whiten: CovarianceRoots | null;
  /** Joint SVD only: divide the key rows by α = √(mean key-row energy / mean value-row energy) first and multiply k_up by α after (energy under the covariance when `whiten` is given). */
  balance?: boolean;
  /**
   * Aborting it stops the split SVD between its key and value factorizations (MlaError INTERRUPTED),
   * after a turn of the event loop (on the CPU the first one never leaves the JavaScript thread, so a
   * signal handler's abort could not run before it ends); never inside an SVD call.
   */
  signal?: AbortSignal;
}

export interface LayerFactors {
  kRope: Float32Array;
  kRopeBias: Float32Array | null;
  kvDown: Float32Array;
  kUp: Float32Array;
  kUpBias: Float32Array | null;
  vUp: Float32Array;
  vUpBias: Float32Array | null;
  latentDim: number;
  /** Retained singular-value energy (of the whitened matrix with activation-aware SVD). */
  energy: number;
}

/** Rows of w [*, D] at `rows`, as float64. */
function rowsOf(w: Float32Array, rows: number[], D: number): Float64Array {
  const out = new Float64Array(rows.length * D);
  rows.forEach((r, i) => out.set(w.subarray(r * D, (r + 1) * D), i * D));
  return out;
}

async function factor(A: Float64Array, M: number, N: number, k: number, whiten: CovarianceRoots | null): Promise<Factors> {
  return whiten ? whitenedFactor(A, M, N, k, whiten) : truncatedFactorAsync(A, M, N, k);
}

/** Factors one layer; the SVD runs off the JavaScript thread where the route allows (CUDA), so the caller can write meanwhile. */
export async function factorLayer(p: LayerFactorInput): Promise<LayerFactors> {
  checkFactorInput(p);
  const { kvHeads, headDim: Dh, hidden: D } = p;
  const ropeRows: number[] = [];
  const nopeRows: number[] = [];
  for (let g = 0; g < kvHeads; g++) {
    const { rope, nope } = headDimOrder(Dh, p.selection[g]!);
    ropeRows.push(...rope.map((d) => g * Dh + d));
    nopeRows.push(...nope.map((d) => g * Dh + d));
  }
  const allV = Array.from({ length: kvHeads * Dh }, (_, i) => i);
  const Mk = nopeRows.length;
  const Mv = allV.length;
  const k = p.rank * kvHeads;
  const pick = (b: Float32Array | null, rows: number[]) => (b ? Float32Array.from(rows, (r) => b[r]!) : null);
  const whiten = p.whiten;
  const rowEnergy = whiten ? (row: Float64Array) => squaredNorm(matmul(row, whiten.sqrt, 1, D, D)) : squaredNorm;
  const alpha = p.balance && p.svd === "joint" ? balanceFactor(p.wk, nopeRows, p.wv, allV, D, rowEnergy) : 1;
  // The SVD sees W_k/α; k_up gets α back, so the model is unchanged before truncation.
  const wk = alpha === 1 ? p.wk : Float32Array.from(p.wk, (x) => x / alpha);
  // On CUDA the rows are gathered and the factors cast on the GPU: nothing of size M×D is built here,
  // which took the llama2-7b conversion from 50 s to 19 s (docs/benchmarks.md).
  const fused = chosenLinalg()?.factorKvAsync;
  let kvDown: Float32Array;
  let kUp: Float32Array;
  let vUp: Float32Array;
  let L: number;
  let energy: number;
  if (p.svd === "joint" && !p.whiten && fused && D <= Mk + Mv) {
    // The GPU route gathers the rows and factors in one call; nothing of size M×D is built here.
    const f = await fused(wk, p.wv, D, Int32Array.from(nopeRows), k);
    L = k;
    kvDown = f.down;
    kUp = f.up.subarray(0, Mk * k);
    vUp = f.up.subarray(Mk * k);
    energy = energyOf(f.values.map((x) => Math.sqrt(Math.max(x, 0))), k);
  } else if (p.svd === "joint") {
    const A = new Float64Array((Mk + Mv) * D);
    A.set(rowsOf(wk, nopeRows, D));
    A.set(rowsOf(p.wv, allV, D), Mk * D);
    const f = await factor(A, Mk + Mv, D, k, p.whiten);
    L = k;
    kvDown = new Float32Array(f.down);
    kUp = new Float32Array(f.up.subarray(0, Mk * k));
    vUp = new Float32Array(f.up.subarray(Mk * k));
    energy = f.energy;
  } else {
    const fk = await factor(rowsOf(p.wk, nopeRows, D), Mk, D, k, p.whiten);
    // Two independent factorizations: a stop asked for during the first one spares the second.
    await nextTurn(p.signal);
    const fv = await factor(rowsOf(p.wv, allV, D), Mv, D, k, p.whiten);
    L = 2 * k;
    kvDown = new Float32Array(L * D);
    kvDown.set(fk.down);
    kvDown.set(fv.down, k * D);
    kUp = new Float32Array(Mk * L);
    vUp = new Float32Array(Mv * L);
    for (let r = 0; r < Mk; r++) for (let j = 0; j < k; j++) kUp[r * L + j] = fk.up[r * k + j]!;
    for (let r = 0; r < Mv; r++) for (let j = 0; j < k; j++) vUp[r * L + k + j] = fv.up[r * k + j]!;
    const sq = (s: Float64Array) => s.reduce((a, x) => a + x * x, 0);
    const kept = (f: Factors) => f.energy * sq(f.sigma);
    energy = (kept(fk) + kept(fv)) / Math.max(sq(fk.sigma) + sq(fv.sigma), 1e-300);
  }
  if (alpha !== 1) for (let i = 0; i < kUp.length; i++) kUp[i] = kUp[i]! * alpha;
  return {
    kRope: new Float32Array(rowsOf(p.wk, ropeRows, D)),
    kRopeBias: pick(p.bk, ropeRows),
    kvDown,
    kUp,
    kUpBias: pick(p.bk, nopeRows),
    vUp,
    vUpBias: pick(p.bv, allV),
    latentDim: L,
    energy,
  };
}

/**
 * factorLayer's input, for a script (convert builds it from the checkpoint's checked shapes): a short
 * or float64 weight read past its end or as other numbers, an unknown svd ran as split, a pair index
 * past head_dim/2 kept rows of the next head, and a missing field failed as "reading '0'". O(Hkv·R).
 */
function checkFactorInput(p: LayerFactorInput): void {
  const where = "factorLayer()", hint = "pass { wk, wv, bk, bv, kvHeads, headDim, hidden, selection, rank, svd, whiten } with wk and wv Float32Arrays [kvHeads·headDim, hidden]";
  checkObjectArg(where, "the input", p, hint);
  checkWholeArg(where, "kvHeads", p.kvHeads, 1, hint);
  checkHeadDimArg(where, "headDim", p.headDim, "pass the model's head_dim, an even number");
  checkWholeArg(where, "hidden", p.hidden, 1, hint);
  checkWholeArg(where, "rank", p.rank, 1, hint);
  if (p.svd !== "joint" && p.svd !== "split") throw new MlaError("BAD_ARGUMENT", `${where}: svd is ${shown(p.svd)}, not "joint" or "split"`, hint);
  const rows = p.kvHeads * p.headDim;
  checkFloatsArg(where, `wk [${rows}, ${p.hidden}]`, p.wk, Float32Array, rows * p.hidden, hint);
  checkFloatsArg(where, `wv [${rows}, ${p.hidden}]`, p.wv, Float32Array, rows * p.hidden, hint);
  for (const key of ["bk", "bv"] as const) if (p[key] !== null && p[key] !== undefined) checkFloatsArg(where, key, p[key], Float32Array, rows, `pass ${key} as a Float32Array [${rows}], or null for none`);
  const pairs = "pass one array of kept pair indices (each in 0…headDim/2 − 1, ascending) per KV head, all of one length";
  if (!(Array.isArray(p.selection) && p.selection.length === p.kvHeads)) throw new MlaError("BAD_ARGUMENT", `${where}: the selection is ${shown(p.selection)}, not ${p.kvHeads} arrays of pair indices (one per KV head)`, pairs);
  const R = Array.isArray(p.selection[0]) ? p.selection[0].length : -1;
  for (let g = 0; g < p.kvHeads; g++) {
    const sel = p.selection[g];
    if (!(Array.isArray(sel) && sel.length === R)) throw new MlaError("BAD_ARGUMENT", `${where}: selection[${g}] is ${shown(sel)}, not ${R < 0 ? "an array" : `an array of ${R}`} pair indices`, pairs);
    for (let i = 0; i < R; i++) checkWholeArg(where, `selection[${g}][${i}]`, sel[i], 0, pairs);
    for (let i = 0; i < R; i++) if (sel[i]! >= p.headDim / 2) throw new MlaError("BAD_ARGUMENT", `${where}: selection[${g}][${i}] is ${sel[i]}, past the last pair ${p.headDim / 2 - 1} of headDim ${p.headDim}`, pairs);
  }
  if (p.whiten !== null && p.whiten !== undefined) checkRoots(where, p.whiten, p.hidden);
}

/** The factors under their tensor names after `model.layers.N.self_attn.` (docs/formats.md); null = no such bias. */
export function factorTensors(f: LayerFactors): Record<string, Float32Array | null> {
  return { "k_rope_proj.weight": f.kRope, "k_rope_proj.bias": f.kRopeBias, "kv_down_proj.weight": f.kvDown, "k_up_proj.weight": f.kUp, "k_up_proj.bias": f.kUpBias, "v_up_proj.weight": f.vUp, "v_up_proj.bias": f.vUpBias };
}

export function squaredNorm(x: Float64Array): number {
  let e = 0;
  for (let c = 0; c < x.length; c++) e += x[c]! * x[c]!;
  return e;
}

/**
 * BKV's α: √(mean energy of the key rows / mean energy of the value rows) of w [·, D] matrices, a
 * row's energy given by `rowEnergy` (‖w‖², or its mean square activation under the calibration
 * covariance). Keys that are (numerically) all rope would be blown up to noise: then 1.
 */
export function balanceFactor(wk: Float32Array | Float64Array, kRows: number[], wv: Float32Array | Float64Array, vRows: number[], D: number, rowEnergy: (row: Float64Array) => number = squaredNorm): number {
  const mean = (w: Float32Array | Float64Array, rows: number[]) => rows.reduce((e, r) => e + rowEnergy(Float64Array.from(w.subarray(r * D, (r + 1) * D))), 0) / Math.max(rows.length, 1);
  const ek = mean(wk, kRows);
  const ev = mean(wv, vRows);
  return ek > 1e-12 * ev && ev > 0 ? Math.sqrt(ek / ev) : 1;
}

/** Largest valid rank per KV head for these shapes (the SVD cannot keep more than min(rows, D) directions). */
export function maxRank(svd: "joint" | "split", kvHeads: number, headDim: number, ropePairs: number, hidden: number): number {
  const nope = kvHeads * (headDim - 2 * ropePairs);
  const v = kvHeads * headDim;
  if (svd === "joint") return Math.floor(Math.min(nope + v, hidden) / kvHeads);
  return Math.floor(Math.min(nope, v, hidden) / kvHeads);
}

/** What maxRank's rank keeps, for the --rank hint: split's one rank caps the values at the key dims' count. */
export function maxRankNote(svd: "joint" | "split", kvHeads: number, headDim: number, ropePairs: number, hidden: number): string {
  const top = maxRank(svd, kvHeads, headDim, ropePairs, hidden);
  const v = kvHeads * headDim, kept = top * kvHeads;
  if (svd === "joint" || kept >= Math.min(v, hidden)) return `${top} keeps everything`;
  return `${top} keeps every position-free key dim, but the values only ${kept} of ${Math.min(v, hidden)} directions per layer (--svd joint keeps more)`;
}
