/**
 * The native CPU backend: the reference backend with its heavy ops (linear and attention, forward
 * and backward) replaced by the C++/OpenMP library built from native/cpu (C ABI native/include/mla.h),
 * loaded with koffi. Tensors stay JavaScript Float32Arrays; koffi passes them to C without copies. The
 * one exception is a bf16 decode cache's rows, held as bf16 bits (hostRowStore.ts) and read as such by
 * the batched decode attention (cpuDecodeBf16.ts).
 */
import fs from "node:fs";
import koffi from "koffi";
import { MlaError } from "../../errors.js";
import { libraryFile, missingLibrary, staleLibrary, unloadableLibrary } from "./libraryFile.js";
import { attentionWindow, headLinearDims, latentAttentionDims, type AttentionOptions, type CalibrationKernels, type DecodeBatchOptions } from "../../tensor/backend.js";
import { Tensor, expectShape, type FloatArray } from "../../tensor/tensor.js";
import { ReferenceBackend, checkIds, checkTargets, data, rows } from "../reference/index.js";
import type { HostOptimizerLoops } from "../reference/training.js";
import { calibrationKernels, optimizerKernels } from "./kernels.js";
import type { Linalg } from "./linalg.js";
import type { KvCacheDtype } from "../../model/kvQuant.js";
import { HostBf16RowStore, roundToBf16, widenBf16 } from "./hostRowStore.js";
import { anyBf16, attentionDecodeRows, latentAttentionDecodeRows, type DecodeKernels } from "./cpuDecodeBf16.js";

/** A tensor's values as the float32 array the native kernels take (a cache may hold another float array). */
function f32(t: Tensor): Float32Array {
  const a = data(t);
  return a instanceof Float32Array ? a : Float32Array.from(a);
}

type Fn = (...args: unknown[]) => number;

interface NativeLib {
  path: string;
  info: string;
  lastError: () => string;
  linear: Fn;
  linearBackward: Fn;
  attention: Fn;
  attentionBackward: Fn;
  latentAttention: Fn;
  attentionBf16: Fn;
  latentAttentionBf16: Fn;
  swiglu: Fn;
  swigluBackward: Fn;
  crossEntropy: Fn;
  rmsnorm: Fn;
  rmsnormBackward: Fn;
  gramF64: Fn;
  symmetricEigen: Fn;
  matmulF64: Fn;
  rope: Fn;
  embedding: Fn;
  embeddingBackward: Fn;
  adamw: Fn;
  sumSquares: Fn;
  scaleInplace: Fn;
  pairNorms: Fn;
  accumulateCovariance: Fn;
}

let cached: NativeLib | string | null = null;

/**
 * Refuses a MHA2MLA_CPU_SERIAL_MACS or MHA2MLA_BLAS the native library would not take (it reads them
 * once and treats an unknown value as unset, which would silently keep the default).
 */
export function checkCpuEnv(env: Readonly<Record<string, string | undefined>> = process.env): void {
  const v = env["MHA2MLA_CPU_SERIAL_MACS"];
  if (!(v === undefined || v === "" || (/^\d+$/.test(v) && Number(v) <= 2 ** 53)))
    throw new MlaError("BAD_ARGUMENT", `MHA2MLA_CPU_SERIAL_MACS=${v} is not a count of multiply-adds`, "use a whole number (0 sends every CPU kernel to the thread team; unset: 1048576), or unset it");
  const blas = env["MHA2MLA_BLAS"];
  if (!(blas === undefined || blas === "" || blas === "own"))
    throw new MlaError("BAD_ARGUMENT", `MHA2MLA_BLAS=${blas} is not known`, "use own (never OpenBLAS), or unset it (OpenBLAS when found; MHA2MLA_OPENBLAS names a library)");
}

/** The loaded library, or a sentence saying why the built one cannot be loaded; an error for a MHA2MLA_NATIVE_LIB that does not load. */
export function loadNativeCpu(): NativeLib | string {
  if (cached) return cached;
  const libFile = libraryFile("MHA2MLA_NATIVE_LIB", "libmla_cpu.so");
  const file = libFile.path;
  if (!fs.existsSync(file)) return (cached = missingLibrary(libFile, "npm install builds it when a C++ compiler is present; `npm run build:native` retries"));
  const stale = staleLibrary(libFile);
  if (stale) return (cached = stale);
  checkCpuEnv();
  try {
    // libgomp reads its wait policy once, as the library loads it. Passive: a thread done with a
    // parallel region sleeps instead of spinning, so a core busy with another process does not stall
    // the next region for a time slice (with one core busy, over the small-product bound alone: eval
    // 356 → 560 tokens/s, decode 50.6 → 78.1; idle unchanged; docs/benchmarks.md, "The CPU under
    // load"). A value the user set is kept.
    process.env["OMP_WAIT_POLICY"] ??= "passive";
    const lib = koffi.load(file);
    const f = (sig: string) => lib.func(sig) as Fn;
    cached = {
      path: file,
      info: (lib.func("const char* mla_build_info(void)") as () => string)(),
      lastError: lib.func("const char* mla_last_error(void)") as () => string,
      linear: f("int mla_cpu_linear(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t K, int64_t N)"),
      linearBackward: f("int mla_cpu_linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db, int64_t M, int64_t K, int64_t N)"),
      attention: f("int mla_cpu_attention(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window)"),
      latentAttention: f("int mla_cpu_latent_attention(const float* qr, const float* kr, const float* qc, const float* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t off, int64_t window)"),
      attentionBf16: f("int mla_cpu_attention_bf16_kv(const float* q, const uint16_t* k, const uint16_t* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window)"),
      latentAttentionBf16: f("int mla_cpu_latent_attention_bf16(const float* qr, const uint16_t* kr, const float* qc, const uint16_t* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t off, int64_t window)"),
      attentionBackward: f("int mla_cpu_attention_backward(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk, float* dv, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window)"),
      swiglu: f("int mla_cpu_swiglu(const float* gate, const float* up, float* y, int64_t n)"),
      swigluBackward: f("int mla_cpu_swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n)"),
      rmsnorm: f("int mla_cpu_rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps)"),
      rmsnormBackward: f("int mla_cpu_rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows, int64_t D, float eps)"),
      gramF64: f("int mla_cpu_gram_f64(const double* A, double* G, int64_t M, int64_t N)"),
      symmetricEigen: f("int mla_cpu_symmetric_eigen(const double* S, double* values, double* vectors, int64_t n)"),
      matmulF64: f("int mla_cpu_matmul_f64(const double* X, const double* Y, double* Z, int64_t a, int64_t b, int64_t c)"),
      rope: f("int mla_cpu_rope(const float* x, float* y, const int32_t* positions, const double* inv_freq, int64_t n_freq, int64_t T, int64_t H, int64_t Dh, int64_t rotary_dims, int32_t sign)"),
      embedding: f("int mla_cpu_embedding(const float* table, const int32_t* ids, float* y, int64_t T, int64_t V, int64_t D)"),
      embeddingBackward: f("int mla_cpu_embedding_backward(const int32_t* ids, const float* dy, float* dtable, int64_t T, int64_t V, int64_t D)"),
      adamw: f("int mla_cpu_adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2, float grad_scale)"),
      sumSquares: f("int mla_cpu_sum_squares(const float* x, int64_t n, double* out)"),
      scaleInplace: f("int mla_cpu_scale_inplace(float* x, int64_t n, float s)"),
      pairNorms: f("int mla_cpu_pair_norms(const float* y, double* acc, int64_t T, int64_t heads, int64_t Dh)"),
      accumulateCovariance: f("int mla_cpu_accumulate_covariance(const float* x, double* acc, int64_t T, int64_t D)"),
      crossEntropy: f("int mla_cpu_cross_entropy(const float* logits, const int32_t* targets, double* loss, float* dlogits, float scale, int64_t T, int64_t V)"),
    };
    return cached;
  } catch (e) {
    return (cached = unloadableLibrary(libFile, (e as Error).message));
  }
}

function last(t: Tensor): number {
  return t.shape[t.shape.length - 1]!;
}

export class NativeCpuBackend extends ReferenceBackend {
  override readonly name = "cpu";
  readonly calibration: CalibrationKernels;
  private readonly loops: HostOptimizerLoops;

  constructor(readonly lib: NativeLib) {
    super("f32");
    this.calibration = calibrationKernels(this);
    this.loops = optimizerKernels(this);
  }

  /** The training step's AdamW, gradient norm and scaling in C++ (5x the TypeScript loops at 26.5M parameters: bench/host-optimizer.ts). */
  override optimizerLoops(): HostOptimizerLoops {
    return this.loops;
  }

  get info(): string {
    return this.lib.info;
  }

  private call(op: string, status: number): void {
    if (status !== 0) throw new MlaError("BAD_ARGUMENT", `native ${op} failed: ${this.lib.lastError()}`, "this is a bug; re-run with --device reference to compare");
  }

  /**
   * Decode caches: a bf16 cache keeps its rows as bf16 in a store of this backend's (hostRowStore.ts),
   * read as such by the decode attention below; f32 caches keep kvCache.ts's float32 host rows, and
   * int8/int4 caches too (their rows rounded there: no CPU kernel reads quantized rows yet).
   */
  storesRowsOf(dtype: KvCacheDtype): boolean {
    return dtype === "bf16";
  }

  /** A store of bf16 rows [rows, …rowShape] (storesRowsOf: bf16 only). */
  createRowStore(rowShape: readonly number[], dtype: KvCacheDtype): HostBf16RowStore {
    if (dtype !== "bf16") throw new MlaError("UNSUPPORTED", `the cpu backend keeps no ${dtype} row store`, "only bf16 caches are held in one (storesRowsOf); this is a bug in the caller");
    return new HostBf16RowStore(this, rowShape);
  }

  /** Row b of src [B, n] (float32), rounded to bf16, into the bf16 store buffer dst[b] at element offsets[b] (kvCache's batched append). */
  scatterRows(src: Tensor, dst: readonly Tensor[], offsets: readonly number[]): void {
    const B = dst.length;
    if (src.shape[0] !== B || offsets.length !== B) throw new MlaError("BAD_ARGUMENT", `scatterRows: [${src.shape}] for ${B} destinations and ${offsets.length} offsets`, "this is a bug in the caller");
    const n = B ? src.size / B : 0;
    const x = f32(src);
    dst.forEach((d, b) => {
      if (d.dtype !== "bf16" || offsets[b]! + n > d.size) throw new MlaError("BAD_ARGUMENT", `scatterRows: destination ${b} is a ${d.dtype} [${d.shape}] tensor, ${n} values at ${offsets[b]}`, "pass bf16 store buffers with room for the row; this is a bug in the caller");
      roundToBf16(x.subarray(b * n, (b + 1) * n), d.storage as Uint16Array, offsets[b]!);
    });
  }

  /** A bf16 store buffer comes back widened to float32 (exact); every other tensor as it is. */
  override download(t: Tensor): FloatArray {
    return t.dtype === "bf16" ? widenBf16(t.storage as Uint16Array) : super.download(t);
  }

  private get decodeKernels(): DecodeKernels {
    const { attention, attentionBf16, latentAttention, latentAttentionBf16 } = this.lib;
    return { attention, attentionBf16, latentAttention, latentAttentionBf16, call: (op, status) => this.call(op, status), make: (shape, values) => this.make(shape, values) };
  }

  /** As the reference backend's, but bf16 cache rows (a bf16 store's buffer) are read as stored. */
  override attentionDecodeBatch(q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
    return anyBf16(k, v) ? attentionDecodeRows(this.decodeKernels, q, k, v, opts) : super.attentionDecodeBatch(q, k, v, opts);
  }

  /** As the reference backend's, but bf16 cache rows are read as stored. */
  override latentAttentionDecodeBatch(qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
    return anyBf16(kr, c) ? latentAttentionDecodeRows(this.decodeKernels, qr, kr, qc, c, opts) : super.latentAttentionDecodeBatch(qr, kr, qc, c, opts);
  }

  override linear(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor {
    const K = last(x);
    const M = rows(x);
    const N = w.shape[0]!;
    expectShape("linear", "w", w, [N, K]);
    if (bias) expectShape("linear", "bias", bias, [N]);
    const y = new Float32Array(M * N);
    this.call("linear", this.lib.linear(data(x), data(w), bias ? data(bias) : null, y, M, K, N));
    return this.make([...x.shape.slice(0, -1), N], y);
  }

  override linearBackward(x: Tensor, w: Tensor, dy: Tensor, need: { x: boolean; w: boolean; bias: boolean }) {
    const K = last(x);
    const M = rows(x);
    const N = w.shape[0]!;
    expectShape("linearBackward", "dy", dy, [...x.shape.slice(0, -1), N]);
    const dx = need.x ? new Float32Array(M * K) : null;
    const dw = need.w ? new Float32Array(N * K) : null;
    const db = need.bias ? new Float32Array(N) : null;
    this.call("linear_backward", this.lib.linearBackward(data(x), data(w), data(dy), dx, dw, db, M, K, N));
    return { dx: dx ? this.make(x.shape, dx) : null, dw: dw ? this.make([N, K], dw) : null, db: db ? this.make([N], db) : null };
  }

  /** Per-head products as native GEMMs, one per head: the head's rows gathered, through its group's matrix. */
  override headLinear(x: Tensor, w: Tensor): Tensor {
    const { T, H, K, G, N } = headLinearDims(x, w);
    const [X, W] = [data(x), data(w)];
    const y = new Float32Array(T * H * N);
    const xs = new Float32Array(T * K), ys = new Float32Array(T * N);
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < T; t++) xs.set(X.subarray((t * H + h) * K, (t * H + h + 1) * K), t * K);
      const g = Math.floor(h / (H / G));
      this.call("head linear", this.lib.linear(xs, W.subarray(g * N * K, (g + 1) * N * K), null, ys, T, K, N));
      for (let t = 0; t < T; t++) y.set(ys.subarray(t * N, (t + 1) * N), (t * H + h) * N);
    }
    return this.make([T, H, N], y);
  }

  /** MLA attention on the latent cache (native/cpu/decode_attention.cpp: each latent row read once for all heads). */
  override latentAttention(qr: Tensor, kr: Tensor, qc: Tensor, c: Tensor, opts: AttentionOptions): Tensor {
    const { T, H, Dr, S, Hkv, L } = latentAttentionDims(qr, kr, qc, c);
    const o = new Float32Array(T * H * L);
    this.call("latent attention", this.lib.latentAttention(f32(qr), f32(kr), f32(qc), f32(c), o, T, S, H, Hkv, Dr, L, opts.scale, opts.queryOffset, attentionWindow("latentAttention", opts.window)));
    return this.make([T, H, L], o);
  }

  override attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
    const [T, H, Dh] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const Dv = last(v);
    expectShape("attention", "k", k, [S, Hkv, Dh]);
    expectShape("attention", "v", v, [S, Hkv, Dv]);
    const o = new Float32Array(T * H * Dv);
    this.call("attention", this.lib.attention(data(q), data(k), data(v), o, T, S, H, Hkv, Dh, Dv, opts.scale, opts.queryOffset, attentionWindow("attention", opts.window)));
    return this.make([T, H, Dv], o);
  }

  override attentionBackward(q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, opts: AttentionOptions) {
    const [T, H, Dh] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const Dv = last(v);
    expectShape("attentionBackward", "dOut", dOut, [T, H, Dv]);
    const dq = new Float32Array(T * H * Dh);
    const dk = new Float32Array(S * Hkv * Dh);
    const dv = new Float32Array(S * Hkv * Dv);
    this.call("attention_backward", this.lib.attentionBackward(data(q), data(k), data(v), data(dOut), dq, dk, dv, T, S, H, Hkv, Dh, Dv, opts.scale, opts.queryOffset, attentionWindow("attentionBackward", opts.window)));
    return { dq: this.make(q.shape, dq), dk: this.make(k.shape, dk), dv: this.make(v.shape, dv) };
  }

  override rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const D = last(x);
    expectShape("rmsnorm", "w", w, [D]);
    const y = new Float32Array(x.size);
    this.call("rmsnorm", this.lib.rmsnorm(data(x), data(w), y, rows(x), D, eps));
    return this.make(x.shape, y);
  }

  override rmsnormBackward(x: Tensor, w: Tensor, eps: number, dy: Tensor) {
    const D = last(x);
    const dx = new Float32Array(x.size);
    const dw = new Float32Array(D);
    this.call("rmsnorm_backward", this.lib.rmsnormBackward(data(x), data(w), data(dy), dx, dw, rows(x), D, eps));
    return { dx: this.make(x.shape, dx), dw: this.make([D], dw) };
  }

  private ropeCall(op: string, x: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims: number | undefined, sign: 1 | -1): Tensor {
    const [T, H, Dh] = x.shape as [number, number, number];
    expectShape(op, "x", x, [positions.length, null, null]);
    const rd = rotaryDims ?? Dh;
    if (rd % 2 !== 0 || rd > Dh || (invFreq.length !== rd / 2 && invFreq.length !== (H * rd) / 2))
      throw new MlaError("BAD_ARGUMENT", `${op}: ${invFreq.length} frequencies for x [${x.shape}] with ${rd} rotary dims`, "pass rotaryDims/2 frequencies, or H × rotaryDims/2");
    const y = new Float32Array(x.size);
    this.call(op, this.lib.rope(data(x), y, positions, invFreq, invFreq.length, T, H, Dh, rd, sign));
    return this.make(x.shape, y);
  }

  override rope(x: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor {
    return this.ropeCall("rope", x, positions, invFreq, rotaryDims, 1);
  }

  override ropeBackward(dy: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor {
    return this.ropeCall("ropeBackward", dy, positions, invFreq, rotaryDims, -1);
  }

  override embedding(table: Tensor, ids: Int32Array): Tensor {
    const [V, D] = table.shape as [number, number];
    const y = new Float32Array(ids.length * D);
    const status = this.lib.embedding(data(table), ids, y, ids.length, V, D);
    if (status !== 0) throw new MlaError("BAD_ARGUMENT", this.lib.lastError().replace(/^[^ ]+: /, ""), "the tokenizer and the model do not match");
    return this.make([ids.length, D], y);
  }

  override embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor {
    const D = last(dy);
    expectShape("embeddingBackward", "dy", dy, [ids.length, D]);
    checkIds("embeddingBackward", ids, vocab);
    const out = new Float32Array(vocab * D);
    this.call("embedding_backward", this.lib.embeddingBackward(ids, data(dy), out, ids.length, vocab, D));
    return this.make([vocab, D], out);
  }

  override swiglu(gate: Tensor, up: Tensor): Tensor {
    expectShape("swiglu", "up", up, gate.shape);
    const y = new Float32Array(gate.size);
    this.call("swiglu", this.lib.swiglu(data(gate), data(up), y, gate.size));
    return this.make(gate.shape, y);
  }

  override swigluBackward(gate: Tensor, up: Tensor, dy: Tensor) {
    const dg = new Float32Array(gate.size);
    const du = new Float32Array(gate.size);
    this.call("swiglu_backward", this.lib.swigluBackward(data(gate), data(up), data(dy), dg, du, gate.size));
    return { dgate: this.make(gate.shape, dg), dup: this.make(up.shape, du) };
  }

  override crossEntropy(logits: Tensor, targets: Int32Array): Float64Array {
    const V = last(logits);
    const T = rows(logits);
    checkTargets("crossEntropy", targets, T, V);
    const loss = new Float64Array(T);
    this.call("cross_entropy", this.lib.crossEntropy(data(logits), targets, loss, null, 0, T, V));
    return loss;
  }

  override crossEntropyBackward(logits: Tensor, targets: Int32Array, scale: number): Tensor {
    const V = last(logits);
    const T = rows(logits);
    checkTargets("crossEntropyBackward", targets, T, V);
    const d = new Float32Array(logits.size);
    this.call("cross_entropy", this.lib.crossEntropy(data(logits), targets, null, d, scale, T, V));
    return this.make(logits.shape, d);
  }
}

/** float64 linear algebra for the conversion SVD, native when the library is built (null otherwise). */
export function nativeLinalg(): Linalg | null {
  const lib = loadNativeCpu();
  if (typeof lib === "string") return null;
  const ok = (op: string, status: number) => {
    if (status !== 0) throw new MlaError("BAD_ARGUMENT", `native ${op} failed: ${lib.lastError()}`, "this is a bug; set MHA2MLA_SKIP_NATIVE_LINALG=1 to use the TypeScript route");
  };
  return {
    name: "cpu",
    gram(A, M, N) {
      const G = new Float64Array(N * N);
      ok("gram_f64", lib.gramF64(A, G, M, N));
      return G;
    },
    eigen(S, n) {
      const values = new Float64Array(n);
      const vectors = new Float64Array(n * n);
      ok("symmetric_eigen", lib.symmetricEigen(S, values, vectors, n));
      return { values, vectors };
    },
    matmul(X, Y, a, b, c) {
      const Z = new Float64Array(a * c);
      ok("matmul_f64", lib.matmulF64(X, Y, Z, a, b, c));
      return Z;
    },
  };
}
