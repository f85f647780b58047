/**
 * The CUDA backend: tensors live in GPU buffers behind opaque handles of libmla_cuda.so (built from
 * native/cuda by `npm install` when nvcc is found), loaded with koffi. Buffers are freed when their
 * tensor is disposed or, failing that, when the JavaScript handle is collected (a FinalizationRegistry;
 * a forced collection runs when much device memory has been handed out since the last one, because
 * the tiny handles alone never make V8 collect). Every op of the Backend interface runs on the GPU.
 */
import fs from "node:fs";
import v8 from "node:v8";
import vm from "node:vm";
import koffi from "koffi";
import { MlaError } from "../../errors.js";
import { checkCudaEnv, cudaRoutes } from "./cudaEnv.js";
import { libraryFile, missingLibrary, staleLibrary, unloadableLibrary } from "./libraryFile.js";
import { attentionDecodeByRows, latentAttentionDecodeByRows } from "../../tensor/rows.js";
import { attentionDecodeBatchDims, attentionWindow, headLinearDims, latentAttentionDecodeBatchDims, latentAttentionDims, type AttentionOptions, type DecodeBatchOptions, type AttentionSaved, type ArenaOptions, type CalibrationKernels, type LinearBackwardNeed, type StepGraph, type ProductInputHint, type Backend, type TrainingKernels } from "../../tensor/backend.js";
import { FloatArray, Tensor, expectShape, type TensorDType } from "../../tensor/tensor.js";
import { deviceRowBytes, type KvCacheDtype } from "../../model/kvQuant.js";
import type { Linalg } from "./linalg.js";
import { profileCuda } from "./cudaProfile.js";

type Fn = (...args: unknown[]) => number;
const F32 = 0;
const BF16 = 1;
/** A quantized decode cache's rows, one element per byte (native/cuda/kv_quant.cuh). */
const Q8 = 4;
const Q4 = 5;
/** mla_status codes (native/include/mla.h): an allocation failed; an op a decode graph capture cannot record. */
const MLA_ERR_MEMORY = 2;
const MLA_ERR_UNSUPPORTED = 5;

interface CudaLib {
  path: string;
  info: string;
  lastError: () => string;
  alloc: (n: number, dtype: number) => unknown;
  view: (parent: unknown, offset: number, n: number) => unknown;
  free: (b: unknown) => void;
  /** Decode graphs (graph.cu): the end of a capture returns the graph, or null with the reason in lastError. */
  graphEnd: () => unknown;
  graphAbort: () => void;
  graphLaunch: (g: unknown, ids: Int32Array, pos: Int32Array, B: number) => number;
  graphDestroy: (g: unknown) => void;
  fns: Record<string, Fn>;
}

const SIGNATURES: Record<string, string> = {
  copy: "int mla_cuda_copy(mla_cuda_buf* dst, int64_t dst_offset, const mla_cuda_buf* src, int64_t src_offset, int64_t n)",
  upload: "int mla_cuda_upload(mla_cuda_buf* dst, const void* host, int64_t bytes)",
  download: "int mla_cuda_download(const mla_cuda_buf* src, void* host, int64_t bytes)",
  memory: "int mla_cuda_memory(int64_t* out)",
  resetPeak: "int mla_cuda_reset_peak(void)",
  cudnnVersion: "int32_t mla_cuda_cudnn_version(void)",
  synchronize: "int mla_cuda_synchronize(void)",
  hostWaitMs: "double mla_cuda_host_wait_ms(void)",
  cast: "int mla_cuda_cast(const mla_cuda_buf* x, mla_cuda_buf* y)",
  linear: "int mla_cuda_linear(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* b, mla_cuda_buf* y, int64_t M, int64_t K, int64_t N)",
  linearBackward: "int mla_cuda_linear_backward(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* dy, mla_cuda_buf* dx, mla_cuda_buf* dw, mla_cuda_buf* db, int64_t M, int64_t K, int64_t N, int32_t accumulate_dx, int32_t accumulate_dw)",
  rmsnorm: "int mla_cuda_rmsnorm(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t rows, int64_t D, float eps)",
  rmsnormBackward: "int mla_cuda_rmsnorm_backward(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* dy, mla_cuda_buf* dx, mla_cuda_buf* dw, int64_t rows, int64_t D, float eps)",
  rope: "int mla_cuda_rope(const mla_cuda_buf* x, mla_cuda_buf* y, const int32_t* positions, const double* inv_freq, int64_t n_freq, int64_t T, int64_t H, int64_t Dh, int64_t rotary_dims, int32_t sign)",
  headLinear: "int mla_cuda_head_linear(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N)",
  headLinearKN: "int mla_cuda_head_linear_kn(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N)",
  attention: "int mla_cuda_attention(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, mla_cuda_buf* o, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, int32_t bf16, mla_cuda_buf* lse, int32_t* saved, const mla_cuda_buf* q16, const mla_cuda_buf* k16, const mla_cuda_buf* v16, mla_cuda_buf* o16)",
  latentAttention: "int mla_cuda_latent_attention(const mla_cuda_buf* qr, const mla_cuda_buf* kr, const mla_cuda_buf* qc, const mla_cuda_buf* c, mla_cuda_buf* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t off, int64_t window)",
  attentionBackward: "int mla_cuda_attention_backward(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, const mla_cuda_buf* dout, mla_cuda_buf* dq, mla_cuda_buf* dk, mla_cuda_buf* dv, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, int32_t bf16, const mla_cuda_buf* o, const mla_cuda_buf* lse, int32_t saved_kind, const mla_cuda_buf* q16, const mla_cuda_buf* k16, const mla_cuda_buf* v16, const mla_cuda_buf* o16)",
  ncclLoad: "int mla_cuda_nccl_load(const char* path, int32_t* version)",
  ncclUniqueId: "int mla_cuda_nccl_unique_id(uint8_t* out)",
  ncclInit: "int mla_cuda_nccl_init(const uint8_t* id, int32_t world, int32_t rank)",
  ncclAllReduceSum: "int mla_cuda_nccl_all_reduce_sum(mla_cuda_buf* x)",
  ncclAllReduceHost: "int mla_cuda_nccl_all_reduce_host(double* values, int64_t n)",
  ncclDestroy: "int mla_cuda_nccl_destroy(void)",
  fillZero: "int mla_cuda_fill_zero(mla_cuda_buf* x)",
  sumSquares: "int mla_cuda_sum_squares(const mla_cuda_buf* x, double* out)",
  adamw: "int mla_cuda_adamw(mla_cuda_buf* p, const mla_cuda_buf* g, mla_cuda_buf* m, mla_cuda_buf* v, mla_cuda_buf* shadow, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2, float grad_scale)",
  attentionDecode: "int mla_cuda_attention_decode(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, mla_cuda_buf* o, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window)",
  latentAttentionDecode: "int mla_cuda_latent_attention_decode(const mla_cuda_buf* qr, const mla_cuda_buf* kr, const mla_cuda_buf* qc, const mla_cuda_buf* c, mla_cuda_buf* o, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t off, int64_t window)",
  decodeAttentionBatch: "int mla_cuda_decode_attention_batch(const mla_cuda_buf* q1, const mla_cuda_buf** k1s, int64_t G1, int64_t D1, const mla_cuda_buf* q2, const mla_cuda_buf** k2s, int64_t G2, int64_t D2, const mla_cuda_buf** vs, int64_t Gv, int64_t Dv, const int32_t* pos, mla_cuda_buf* o, int64_t B, int64_t H, float scale, int64_t window)",
  scatterRows: "int mla_cuda_scatter_rows(const mla_cuda_buf* src, mla_cuda_buf** dsts, const int64_t* offsets, int64_t B, int64_t n)",
  kvQuantRows: "int mla_cuda_kv_quant_rows(const mla_cuda_buf* src, mla_cuda_buf** dsts, const int64_t* rows, int64_t R, int64_t n)",
  kvDequantRows: "int mla_cuda_kv_dequant_rows(const mla_cuda_buf* src, int64_t row0, int64_t count, int64_t n, mla_cuda_buf* dst)",
  swiglu: "int mla_cuda_swiglu(const mla_cuda_buf* g, const mla_cuda_buf* u, mla_cuda_buf* y, int64_t n)",
  swigluBackward: "int mla_cuda_swiglu_backward(const mla_cuda_buf* g, const mla_cuda_buf* u, const mla_cuda_buf* dy, mla_cuda_buf* dg, mla_cuda_buf* du, int64_t n)",
  axpby: "int mla_cuda_axpby(const mla_cuda_buf* a, const mla_cuda_buf* b, mla_cuda_buf* y, float sa, float sb, int64_t n)",
  embedding: "int mla_cuda_embedding(const mla_cuda_buf* table, const int32_t* ids, mla_cuda_buf* y, int64_t T, int64_t V, int64_t D)",
  embeddingBackward: "int mla_cuda_embedding_backward(const int32_t* ids, const mla_cuda_buf* dy, mla_cuda_buf* dtable, int64_t T, int64_t V, int64_t D)",
  klDivergence: "int mla_cuda_kl_divergence(const mla_cuda_buf* student, const mla_cuda_buf* teacher, double* loss, mla_cuda_buf* grad, float temperature, float scale, int64_t T, int64_t V)",
  crossEntropy: "int mla_cuda_cross_entropy(const mla_cuda_buf* logits, const int32_t* targets, double* loss, mla_cuda_buf* grad, float scale, int64_t T, int64_t V)",
  rowLogprobs: "int mla_cuda_row_logprobs(const mla_cuda_buf* logits, const int32_t* targets, int64_t T, int64_t V, int32_t top, float* logprob, int32_t* top_ids, float* top_lp)",
  rowArgmax: "int mla_cuda_row_argmax(const mla_cuda_buf* logits, int64_t T, int64_t V, int32_t* ids)",
  crossEntropyDevice: "int mla_cuda_cross_entropy_device(const mla_cuda_buf* logits, const int32_t* targets, mla_cuda_buf* loss, int64_t loss_offset, mla_cuda_buf* grad, float scale, int64_t T, int64_t V)",
  copyCols: "int mla_cuda_copy_cols(const mla_cuda_buf* x, mla_cuda_buf* y, int64_t M, int64_t Nx, int64_t offx, int64_t Ny, int64_t offy, int64_t w)",
  gatherCols: "int mla_cuda_gather_cols(const mla_cuda_buf* x, const int32_t* idx, mla_cuda_buf* y, int64_t M, int64_t N, int64_t K)",
  scatterCols: "int mla_cuda_scatter_cols(const mla_cuda_buf* dy, const int32_t* idx, mla_cuda_buf* y, int64_t M, int64_t K, int64_t N)",
  linearMany: "int mla_cuda_linear_many(const mla_cuda_buf* x, const mla_cuda_buf** ws, mla_cuda_buf** ys, int32_t count, int64_t M, int64_t K)",
  gramF64: "int mla_cuda_gram_f64(const double* A, double* G, int64_t M, int64_t N)",
  matmulF64: "int mla_cuda_matmul_f64(const double* X, const double* Y, double* Z, int64_t a, int64_t b, int64_t c)",
  pairNorms: "int mla_cuda_pair_norms(const mla_cuda_buf* y, double* acc, int64_t T, int64_t heads, int64_t Dh)",
  factorKv: "int mla_cuda_factor_kv(const float* wk, const float* wv, int64_t rows_k, int64_t Mv, int64_t D, const int32_t* nope_rows, int64_t Mk, int64_t k, float* down, float* up, double* values)",
  factorCols: "int mla_cuda_factor_cols(const double* A, int64_t M, int64_t N, int64_t k, double* down, double* up, double* values)",
  symmetricEigen: "int mla_cuda_symmetric_eigen(const double* S, double* values, double* vectors, int64_t n)",
  graphBegin: "int mla_cuda_graph_begin(const int32_t* ids, const int32_t* pos, int64_t B)",
};

let cached: CudaLib | string | null = null;

/**
 * Why the CUDA library cannot be loaded, read from its file alone (missing, or built against another C
 * interface), or null: what a process that must not take a GPU itself (the --gpus launcher) can check.
 */
export function cudaLibraryAbsent(libFile = libraryFile("MHA2MLA_CUDA_LIB", "libmla_cuda.so")): string | null {
  if (!fs.existsSync(libFile.path)) return missingLibrary(libFile, "npm install builds it when nvcc is found; `npm run build:native` retries and prints why it failed");
  return staleLibrary(libFile);
}

/**
 * The loaded and initialized library, or a sentence saying why CUDA cannot be used (which file, why);
 * an error for a MHA2MLA_CUDA_LIB that does not load (one that loads on a machine without a GPU is a sentence).
 */
export function loadCuda(): CudaLib | string {
  if (cached) return cached;
  const libFile = libraryFile("MHA2MLA_CUDA_LIB", "libmla_cuda.so");
  const file = libFile.path;
  const absent = cudaLibraryAbsent(libFile);
  if (absent) return (cached = absent);
  let lib: ReturnType<typeof koffi.load> | undefined;
  let lastError: () => string;
  let init: (d: number) => number;
  try {
    lib = koffi.load(file);
    lastError = lib.func("const char* mla_last_error(void)") as () => string;
    init = lib.func("int mla_cuda_init(int device)") as (d: number) => number;
  } catch (e) {
    const deps = lib ? "" : " (are the CUDA libraries cuBLAS/cuSOLVER on LD_LIBRARY_PATH?)";
    return (cached = unloadableLibrary(libFile, `${(e as Error).message}${deps}`));
  }
  koffi.opaque("mla_cuda_buf");
  koffi.opaque("mla_cuda_graph");
  if (init(Number(process.env["MHA2MLA_CUDA_DEVICE"] ?? 0)) !== 0) return (cached = `${file}: ${lastError().replace(/^[^ ]+: /, "")}`);
  const fns: Record<string, Fn> = {};
  for (const [k, sig] of Object.entries(SIGNATURES)) fns[k] = lib.func(sig) as Fn;
  return (cached = {
    path: file,
    info: (lib.func("const char* mla_cuda_info(void)") as () => string)(),
    lastError,
    alloc: lib.func("mla_cuda_buf* mla_cuda_alloc(int64_t n, int32_t dtype)") as (n: number, d: number) => unknown,
    view: lib.func("mla_cuda_buf* mla_cuda_view(const mla_cuda_buf* parent, int64_t offset, int64_t n)") as (p: unknown, o: number, n: number) => unknown,
    free: lib.func("void mla_cuda_free(mla_cuda_buf* b)") as (b: unknown) => void,
    graphEnd: lib.func("mla_cuda_graph* mla_cuda_graph_end(void)") as () => unknown,
    graphAbort: lib.func("void mla_cuda_graph_abort(void)") as () => void,
    graphLaunch: lib.func("int mla_cuda_graph_launch(mla_cuda_graph* g, const int32_t* ids, const int32_t* pos, int64_t B)") as CudaLib["graphLaunch"],
    graphDestroy: lib.func("void mla_cuda_graph_destroy(mla_cuda_graph* g)") as (g: unknown) => void,
    fns,
  });
}

/** The library's last error as an MlaError: OUT_OF_MEMORY (with `oomHint`) or a failed op (with `hint`). */
function cudaError(lib: CudaLib, op: string, hint: string, oomHint: string, status = 0): MlaError {
  const msg = lib.lastError().replace(/^[^ ]+: /, "");
  if (/out of GPU memory/.test(msg) || status === MLA_ERR_MEMORY) return new MlaError("OUT_OF_MEMORY", `${op}: ${msg}`, oomHint);
  if (status === MLA_ERR_UNSUPPORTED) return new MlaError("UNSUPPORTED", `${op}: ${msg}`, "the step runs op by op instead");
  return new MlaError("BAD_ARGUMENT", `CUDA ${op} failed: ${msg}`, hint);
}

/**
 * A device buffer; `handle` is the opaque mla_cuda_buf*. A view keeps its parent reachable. `bf16` is
 * its contents rounded to bf16 (made by the first bf16 product that reads it inside an arena opened
 * with `bf16Inputs`, read by the others and by their backward), freed with it.
 */
class DeviceBuffer {
  bf16: Tensor | null = null;
  /**
   * The recorded decode step whose output this is (made during the recording, alive at its end): the
   * graph re-makes it at the same address at every launch and frees it with itself, so dispose()
   * leaves it alone, and the reference keeps the graph alive while its outputs are.
   */
  graph: StepGraph | null = null;
  constructor(readonly handle: unknown, readonly n: number, readonly dtype: number, readonly parent: DeviceBuffer | null = null) {}
}

/** Bytes per element of a device buffer of `dtype` (BF16, F32, or Q8/Q4: bytes). */
const elementBytes = (dtype: number) => (dtype === BF16 ? 2 : dtype === Q8 || dtype === Q4 ? 1 : 4);
const tensorDtype = (dtype: number): TensorDType => (dtype === BF16 ? "bf16" : dtype === Q8 ? "int8" : dtype === Q4 ? "int4" : "f32");

/** The buffers of `tensors` and every buffer they are views of. */
function buffersBehind(tensors: readonly Tensor[]): Set<DeviceBuffer> {
  const out = new Set<DeviceBuffer>();
  for (const t of tensors) for (let b: DeviceBuffer | null = t.storage as DeviceBuffer; b; b = b.parent) out.add(b);
  return out;
}

/** Growable [rows, rowSize] rows on the device (decode caches): appending copies only the new rows. */
export class DeviceRowStore {
  private buf: Tensor | null = null;
  private room = 0;
  rows = 0;
  readonly rowSize: number;
  /** Buffer elements per row: rowSize, or a quantized row's bytes (values and scales, kv_quant.cuh). */
  private readonly unit: number;
  /** The buffer's native dtype. */
  private readonly code: number;
  /**
   * dtype "bf16": rows are stored rounded to bf16 (half the bytes; `--kv-cache bf16`), and read by
   * the batched decode's bf16 kernels; "int8"/"int4": rows are stored quantized (kvQuant.ts's groups
   * and scales): int8 stores are read as they are by the decode kernels that take their shape (MLA's
   * latent: latent_decode_q8.cu; MHA/GQA: mha_decode.cu); int4 stores, and int8 ones of other shapes,
   * have each decode step dequantize their visible rows for the bf16 kernels. view() then returns a
   * float32 copy.
   */
  constructor(private readonly backend: CudaBackend, private readonly rowShape: readonly number[], readonly dtype: KvCacheDtype = "f32") {
    this.rowSize = rowShape.reduce((x, y) => x * y, 1);
    this.code = { f32: F32, bf16: BF16, int8: Q8, int4: Q4 }[dtype];
    this.unit = this.quantized ? deviceRowBytes(this.rowSize, dtype as "int8" | "int4") : this.rowSize;
  }

  private get quantized(): boolean {
    return this.code === Q8 || this.code === Q4;
  }

  /** rows [n, …rowShape] float32: n counted from the shape, since a part may be zero wide (MLA without rope pairs). */
  append(rows: Tensor): void {
    const add = rows.shape[0]!;
    this.reserve(add);
    if (this.dtype === "f32") this.backend.copyElements(this.buf!, this.rows * this.rowSize, rows, 0, rows.size);
    else if (this.quantized) {
      if (add && this.rowSize) this.backend.quantizeRows(rows, Array.from({ length: add }, () => this.buf!), Array.from({ length: add }, (_, i) => this.rows + i), this.rowSize);
    } else if (rows.size && rows.dtype === "bf16") this.backend.copyElements(this.buf!, this.rows * this.rowSize, rows, 0, rows.size);
    else if (rows.size) {
      const slot = this.backend.viewOf(this.buf!, this.rows * this.rowSize, rows.size, [rows.size]);
      this.backend.training.cast(rows, slot);
      slot.dispose();
    }
    this.rows += add;
  }

  /**
   * Makes room for `add` more rows. `exact`: room for exactly that (a cache made with a capacity).
   * Otherwise growth leaves spare rows: as many as it holds up to 1024, then 1024 (a long cache holds at
   * most 1024 spare rows, where doubling would leave up to its whole size unused, which decides how
   * many sequences fit), so a prefill or a clone is followed by up to 1024 decode steps without a move,
   * and each row is copied at most S/1024 times, little next to the S rows every step reads anyway.
   */
  reserve(add: number, exact = false): void {
    const need = this.rows + add;
    if (need <= this.room) return;
    const cap = exact ? need : need + Math.max(16, Math.min(need, 1024));
    // Not in any open arena: a cached forward runs in one, and the cache outlives it.
    const grown = this.backend.empty([cap, ...this.rowShape], "a decode cache", this.code, false, cap * this.unit);
    if (this.buf && this.rows) this.backend.copyElements(grown, 0, this.buf, 0, this.rows * this.unit);
    if (this.buf) this.backend.free(this.buf);
    this.buf = grown;
    this.room = cap;
  }

  /** This (empty) store becomes a copy of `other`'s first `rows` rows, device to device in their stored dtype, with room for `capacity`. */
  copyRowsFrom(other: DeviceRowStore, rows = other.rows, capacity = Math.max(other.rows, other.capacity)): void {
    if (this.rows) throw new MlaError("BAD_ARGUMENT", `copyRowsFrom: the target store already holds ${this.rows} rows`, "copy into a new store; this is a bug in the caller");
    if (other.dtype !== this.dtype || other.rowSize !== this.rowSize)
      throw new MlaError("BAD_ARGUMENT", `copyRowsFrom: a ${this.dtype} store of rows of ${this.rowSize} cannot copy ${other.dtype} rows of ${other.rowSize}`, "copy between stores of one dtype and row shape; this is a bug in the caller");
    if (rows > other.rows) throw new MlaError("BAD_ARGUMENT", `copyRowsFrom: ${rows} rows of a store holding ${other.rows}`, "this is a bug in the caller");
    this.reserve(Math.max(rows, capacity), true);
    if (rows && this.rowSize) this.backend.copyElements(this.buf!, 0, other.buf!, 0, rows * this.unit);
    this.rows = rows;
  }

  truncate(rows: number): void {
    this.rows = Math.min(this.rows, rows);
  }

  dispose(): void {
    if (this.buf) this.backend.free(this.buf);
    this.buf = null;
    this.room = 0;
    this.rows = 0;
  }

  /** Rows the buffer holds room for. */
  get capacity(): number {
    return this.room;
  }

  /** Bytes the buffer takes, room included. */
  get heldBytes(): number {
    return this.room * this.unit * elementBytes(this.code);
  }

  /** Counts `add` rows written into the spare capacity by another call (CudaBackend.scatterRows). */
  commit(add: number): void {
    if (this.rows + add > this.room) throw new MlaError("BAD_ARGUMENT", `a decode cache of ${this.room} rows cannot take ${add} more after ${this.rows}`, "reserve the rows first; this is a bug in the caller");
    this.rows += add;
  }

  /** The whole buffer [capacity, …rowShape]: rows past `rows` are spare (valid until the next reserve). */
  get storage(): Tensor {
    return this.buf ?? (this.buf = this.backend.empty([0, ...this.rowShape], "an empty cache", this.code, true, 0));
  }

  /** All rows so far as float32 [rows, ...shape] (f32: a view, valid until the next append; otherwise a copy). */
  view(shape: readonly number[]): Tensor {
    if (!this.buf) return this.backend.empty([0, ...shape], "an empty cache");
    if (this.quantized) {
      const copy = this.backend.empty([this.rows, ...shape], "a float32 copy of a quantized decode cache");
      if (copy.size) this.backend.dequantizeRows(this.buf, 0, this.rows, this.rowSize, copy);
      return copy;
    }
    const rows = this.backend.viewOf(this.buf, 0, this.rows * this.rowSize, [this.rows, ...shape]);
    if (this.dtype === "f32") return rows;
    const copy = this.backend.empty([this.rows, ...shape], "a float32 copy of a bf16 decode cache");
    if (rows.size) this.backend.training.cast(rows, copy);
    rows.dispose();
    return copy;
  }
}

function last(t: Tensor): number {
  return t.shape[t.shape.length - 1]!;
}

/**
 * The most rows per matrix that gemv.cu's kernels take (MHA2MLA_GEMV_ROWS, validated at start-up by
 * cudaEnv.ts; its default is gemv.cu's DEFAULT_ROWS), so linearMany does not stage a launch the
 * library would refuse.
 */
function gemvRows(): number {
  const v = process.env["MHA2MLA_GEMV_ROWS"];
  return v ? Number(v) : 16;
}

/** opts, where `caches` hold float rows: MHA2MLA_DECODE_BATCH=rows slices them as floats, which a quantized store's bytes are not. */
function checkFloatRows<T>(opts: T, caches: readonly Tensor[]): T {
  if (caches.some((t) => t.dtype === "int8" || t.dtype === "int4")) throw new MlaError("UNSUPPORTED", "MHA2MLA_DECODE_BATCH=rows reads cache rows as floats, and these caches hold int8/int4 rows", "unset MHA2MLA_DECODE_BATCH, or decode with a bf16 or f32 cache");
  return opts;
}

/** Rows of t: the product of every dim but the last (not size / last, which is NaN for a zero-width last dim). */
function rowsOf(t: Tensor): number {
  return t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
}

/** [V, T] of logits [T, V] with one target per row (every loss op's entry check). */
function lossRows(logits: Tensor, targets: Int32Array): [number, number] {
  const V = last(logits), T = rowsOf(logits);
  if (targets.length !== T) throw new MlaError("BAD_ARGUMENT", `crossEntropy: ${targets.length} targets for ${T} rows`, "one target per row");
  return [V, T];
}

/** A synchronous full collection (V8's gc exposed at run time), so finalizers free unreachable buffers. */
const forceGc: () => void = (() => {
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc") as () => void;
})();

export interface GpuMemory {
  /** Bytes held by live mha2mla buffers, their peak since the last reset, free and total on the device. */
  live: number;
  peak: number;
  free: number;
  total: number;
}

export class CudaBackend implements Backend {
  readonly name = "cuda";
  /**
   * latentAttention for T > 1 is a float32 loop kernel without tensor cores, against products and a
   * fused attention on them: the plain form wins every prompt chunk on a filled cache. Measured at the
   * llama2-7b shape (H100, bench/prefill-chunk.ts, docs/benchmarks.md, twenty-sixth session): 2 to 8
   * tokens on a 1k–16k cache took 16–453 ms absorbed against 1.9–9.7 ms plain, where the weight 8 of
   * before still picked the absorbed form. One token (a decode step) takes the batched decode path.
   */
  readonly latentAttentionCost = Infinity;
  readonly batchedAttention = true;
  readonly training: TrainingKernels;
  /** Calibration's pair norms on the device (the covariance: the callers' loop on downloaded activations). */
  readonly calibration: CalibrationKernels = { pairNorms: (y, T, heads, Dh, acc) => this.pairNorms(y, T, heads, Dh, acc), covariance: null };
  private readonly registry: FinalizationRegistry<unknown>;
  private sinceGc = 0;
  private readonly gcEvery: number;
  /** Tensors allocated inside the open arenas, innermost last. */
  private readonly arenas: Tensor[][] = [];
  /** Open arenas whose tensors are never written after they are made (so their bf16 copies stay true). */
  private bf16InputArenas = 0;
  /** Milliseconds the host has spent blocked waiting for the device (see hostWaitMs). */
  private waited = 0;
  /** While a decode step is recorded: the buffers it made and has not freed (captureStep). */
  private recording: Set<DeviceBuffer> | null = null;
  /** Frees the graphs their sessions dropped without dispose(). */
  private readonly graphs = new FinalizationRegistry<unknown>((g) => this.lib.graphDestroy(g));

  constructor(readonly lib: CudaLib) {
    checkCudaEnv();
    this.registry = new FinalizationRegistry((h) => lib.free(h));
    this.gcEvery = Math.max(256 << 20, Math.floor(this.memory().total / 8));
    this.training = cudaTraining(this);
    if (process.env["MHA2MLA_CUDA_PROFILE"]) profileCuda(this, this.training, () => this.call("synchronize", lib.fns["synchronize"]!()));
  }

  arena<T>(fn: () => T, opts: ArenaOptions<T> = {}): T {
    const mine: Tensor[] = [];
    this.arenas.push(mine);
    if (opts.bf16Inputs) this.bf16InputArenas++;
    let kept = new Set<DeviceBuffer>();
    try {
      const result = fn();
      if (opts.keep) kept = buffersBehind(opts.keep(result));
      return result;
    } finally {
      if (opts.bf16Inputs) this.bf16InputArenas--;
      this.arenas.pop();
      const outer = this.arenas[this.arenas.length - 1];
      for (const t of mine) {
        if (!kept.has(t.storage as DeviceBuffer)) this.free(t);
        else if (outer) outer.push(t);
        // Kept past every arena (a decode step's logits): left to the collector like any tensor made
        // outside one, so it counts toward the forced collections.
        else this.sinceGc += (t.storage as DeviceBuffer).n * elementBytes((t.storage as DeviceBuffer).dtype);
      }
    }
  }

  persistent<T>(fn: () => T): T {
    const open = this.arenas.splice(0);
    const bf16Inputs = this.bf16InputArenas;
    this.bf16InputArenas = 0;
    try {
      return fn();
    } finally {
      this.arenas.push(...open);
      this.bf16InputArenas = bf16Inputs;
    }
  }

  /** bf16 for an output only products read, inside a bf16Inputs arena (see ProductInputHint). */
  private productInputDtype(hint: ProductInputHint | undefined): number {
    return hint?.forProducts && this.bf16InputArenas > 0 ? BF16 : F32;
  }

  /** x as float32: a bf16 product input (ProductInputHint) read by a float32 product is widened. */
  private asF32(x: Tensor): Tensor {
    if (x.dtype === "f32") return x;
    const f = this.empty(x.shape, "a float32 copy of a bf16 activation");
    this.training.cast(x, f);
    return f;
  }

  /**
   * x rounded to bf16, kept with x's buffer so that every bf16 product reading x (the q/k/v
   * projections of one normed input, and each one's weight gradient) rounds it once. Made only inside
   * a bf16Inputs arena, where tensors are not written after they are made; `make` false only looks.
   */
  private bf16Of(x: Tensor, make: boolean): Tensor | null {
    const buf = x.storage as DeviceBuffer;
    if (buf.bf16 || !make || this.bf16InputArenas === 0 || buf.dtype !== F32 || buf.n === 0) return buf.bf16;
    // Owned by x's buffer, not by the arena: it must live exactly as long as x (free() frees both).
    const copy = this.empty([buf.n], "a bf16 copy of activations", BF16, false);
    this.training.cast(x.reshape([buf.n]), copy);
    buf.bf16 = copy;
    return copy;
  }

  /**
   * Milliseconds the host has spent blocked on the device so far (downloads, per-row losses, the
   * gradient norm, synchronizations): a step's wall time less its share of this is the host's own
   * time, and a step whose host time is close to its wall time is host-bound.
   */
  hostWaitMs(): number {
    // The library's own waits too: when the host runs far enough ahead, staging a small table waits
    // for a pinned slot the GPU is still copying from.
    return this.waited + this.libraryWaitMs();
  }

  /** Runs a library call that waits for the device, counting the wait. */
  blocking<T>(fn: () => T): T {
    const t0 = performance.now();
    const lib0 = this.libraryWaitMs();
    try {
      return fn();
    } finally {
      // A wait the library counted itself inside the call (a staging slot) is not counted twice.
      this.waited += performance.now() - t0 - (this.libraryWaitMs() - lib0);
    }
  }

  private libraryWaitMs(): number {
    return this.lib.fns["hostWaitMs"]!() as number;
  }

  /** Runs a raw library call, turning a failure into an MlaError naming `op`. */
  run(op: string, status: number): void {
    this.call(op, status);
  }

  handle(t: Tensor): unknown {
    return this.h(t);
  }

  get info(): string {
    return this.lib.info;
  }

  private fail(op: string, hint = "this is a bug; re-run with --device cpu to compare", status = 0): never {
    throw cudaError(this.lib, op, hint, "use --device cpu, a shorter --ctx / --calib-len, or a smaller model", status);
  }

  private call(op: string, status: number): void {
    if (status !== 0) this.fail(op, undefined, status);
  }

  routes(): string {
    return cudaRoutes();
  }

  captureStep<T>(ids: Int32Array, positions: Int32Array, run: () => T): { result: T; graph: StepGraph } {
    const B = ids.length;
    if (positions.length !== B || B === 0) throw new MlaError("BAD_ARGUMENT", `captureStep: ${B} token ids and ${positions.length} positions`, "one of each per sequence; this is a bug in the caller");
    if (process.env["MHA2MLA_CUDA_PROFILE"]) throw new MlaError("UNSUPPORTED", "a decode step cannot be recorded while MHA2MLA_CUDA_PROFILE times every op", "unset MHA2MLA_CUDA_PROFILE to record decode steps");
    // That route sizes its views and products from each sequence's length on the host.
    if (process.env["MHA2MLA_DECODE_BATCH"] === "rows") throw new MlaError("UNSUPPORTED", "a decode step cannot be recorded with MHA2MLA_DECODE_BATCH=rows (one attention call per sequence, sized on the host)", "unset MHA2MLA_DECODE_BATCH to record decode steps");
    this.call("graph_begin", this.lib.fns["graphBegin"]!(ids, positions, B));
    let result: T;
    const made = (this.recording = new Set());
    try {
      result = run();
    } catch (e) {
      this.lib.graphAbort();
      throw e;
    } finally {
      this.recording = null;
    }
    const handle = this.lib.graphEnd();
    if (!handle) throw new MlaError("UNSUPPORTED", `the decode step cannot be recorded as a CUDA graph: ${this.lib.lastError().replace(/^[^ ]+: /, "")}`, "it runs op by op instead (set MHA2MLA_DECODE_GRAPHS=0 to skip the attempt)");
    let live = true;
    const token = {};
    const graph: StepGraph = {
      launch: (nextIds, nextPositions) => {
        if (!live) throw new MlaError("BAD_ARGUMENT", "launch of a disposed decode graph", "this is a bug in the caller");
        this.call("graph_launch", this.lib.graphLaunch(handle, nextIds, nextPositions, nextIds.length));
      },
      dispose: () => {
        if (live) {
          this.graphs.unregister(token);
          this.lib.graphDestroy(handle);
        }
        live = false;
      },
    };
    this.graphs.register(graph, handle, token);
    for (const buf of made) buf.graph = graph;
    try {
      graph.launch(ids, positions); // the recorded step itself: capture only recorded it
    } catch (e) {
      graph.dispose();
      throw e;
    }
    return { result, graph };
  }

  /** A new device tensor of `shape` (contents undefined); `what` names it in out-of-memory errors. */
  empty(shape: readonly number[], what: string, dtype = F32, inArena = true, elements?: number): Tensor {
    let n = 1;
    for (const d of shape) n *= d;
    // A quantized store's buffer holds its rows' bytes, not one element per value of its shape.
    if (elements !== undefined) n = elements;
    const bytes = n * elementBytes(dtype);
    // Inside an arena every buffer is freed explicitly; outside, the garbage collector is the backstop.
    const arena = this.arenas[this.arenas.length - 1];
    if (!arena) this.sinceGc += bytes;
    if (this.sinceGc > this.gcEvery) {
      this.sinceGc = 0;
      forceGc();
    }
    const h = this.lib.alloc(n, dtype);
    if (!h) this.fail(`allocating ${what} [${shape}] (${(bytes / 2 ** 20).toFixed(1)} MiB)`);
    const buf = new DeviceBuffer(h, n, dtype);
    this.registry.register(buf, h, buf);
    this.recording?.add(buf);
    const t = new Tensor(this, shape, buf, tensorDtype(dtype));
    if (inArena) arena?.push(t);
    return t;
  }

  /** dst[dstOffset + i] = src[srcOffset + i], i < n (elements), on the device. */
  copyElements(dst: Tensor, dstOffset: number, src: Tensor, srcOffset: number, n: number): void {
    this.call("copy", this.lib.fns["copy"]!(this.h(dst), dstOffset, this.h(src), srcOffset, n));
  }

  /** A tensor of `shape` on elements [offset, offset + n) of t, sharing its memory. */
  viewOf(t: Tensor, offset: number, n: number, shape: readonly number[]): Tensor {
    const parent = t.storage as DeviceBuffer;
    const h = this.lib.view(parent.handle, offset, n);
    if (!h) this.fail("view");
    const buf = new DeviceBuffer(h, n, parent.dtype, parent);
    this.registry.register(buf, h, buf);
    const view = new Tensor(this, shape, buf, t.dtype);
    this.arenas[this.arenas.length - 1]?.push(view);
    return view;
  }

  createRowStore(rowShape: readonly number[], dtype: KvCacheDtype = "f32"): DeviceRowStore {
    return new DeviceRowStore(this, rowShape, dtype);
  }

  /** Row r of src [R, n] (float32) quantized into stores[r] (int8/int4 storage) as its row rows[r] (kv_quant.cu). */
  quantizeRows(src: Tensor, stores: readonly Tensor[], rows: readonly number[], n: number): void {
    const f = this.asF32(src);
    this.call("kv_quant_rows", this.lib.fns["kvQuantRows"]!(this.h(f), stores.map((t) => this.h(t)), BigInt64Array.from(rows, BigInt), rows.length, n));
    if (f !== src) f.dispose();
  }

  /** Rows [row0, row0 + count) of a quantized store of rows of n values into dst [count, …] (float32 or bf16). */
  dequantizeRows(store: Tensor, row0: number, count: number, n: number, dst: Tensor): void {
    this.call("kv_dequant_rows", this.lib.fns["kvDequantRows"]!(this.h(store), row0, count, n, this.h(dst)));
  }

  private h(t: Tensor | null | undefined): unknown {
    if (!t) return null;
    if (!(t.storage instanceof DeviceBuffer)) throw new MlaError("BAD_ARGUMENT", `a ${t.backend.name} tensor [${t.shape}] was passed to the CUDA backend`, "upload it with the CUDA backend first; this is a bug in the caller");
    return t.storage.handle;
  }

  upload(data: FloatArray, shape: readonly number[]): Tensor {
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
    const t = this.empty(shape, "an uploaded tensor");
    this.call("upload", this.lib.fns["upload"]!(this.h(t), f32, f32.byteLength));
    return t;
  }

  overwrite(t: Tensor, data: Float32Array): void {
    const buf = t.storage as DeviceBuffer;
    if (buf.dtype !== F32 || data.length !== buf.n) throw new MlaError("BAD_ARGUMENT", `overwrite: ${data.length} float32 values for a tensor of ${buf.n}${buf.dtype !== F32 ? " bf16" : ""} elements`, "this is a bug in the caller");
    this.call("upload", this.lib.fns["upload"]!(buf.handle, data, data.byteLength));
    // A bf16 copy made while t was an activation no longer matches it.
    if (buf.bf16) this.free(buf.bf16);
    buf.bf16 = null;
  }

  /** A weight kept in bf16 on the device (half the memory and bandwidth; linear accumulates in f32). */
  uploadBf16(bits: Uint16Array, shape: readonly number[]): Tensor {
    const b = this.empty(shape, "a bf16 weight", BF16);
    if (bits.length !== (b.storage as DeviceBuffer).n) throw new MlaError("BAD_ARGUMENT", `uploadBf16: ${bits.length} values for shape [${shape}]`, "this is a bug in the caller");
    this.call("upload", this.lib.fns["upload"]!(this.h(b), bits, bits.byteLength));
    return b;
  }

  download(t: Tensor): Float32Array {
    const buf = t.storage as DeviceBuffer;
    if (buf.dtype === Q8 || buf.dtype === Q4) throw new MlaError("BAD_ARGUMENT", `a quantized cache store [${t.shape}] holds bytes, not values`, "read its rows through the store's view(); this is a bug in the caller");
    if (buf.dtype !== F32) {
      const f = this.empty(t.shape, "a download");
      this.call("cast", this.lib.fns["cast"]!(this.h(t), this.h(f)));
      const out = this.download(f);
      this.free(f);
      return out;
    }
    const out = new Float32Array(buf.n);
    this.call("download", this.blocking(() => this.lib.fns["download"]!(buf.handle, out, out.byteLength)));
    return out;
  }

  free(t: Tensor): void {
    const buf = t.storage as DeviceBuffer;
    if (buf.graph) return;
    this.recording?.delete(buf);
    if (!this.registry.unregister(buf)) return; // already freed
    this.lib.free(buf.handle);
    if (buf.bf16) this.free(buf.bf16);
    buf.bf16 = null;
  }

  /** Collects unreachable tensors and lets their finalizers free the device memory. */
  async reclaim(): Promise<void> {
    forceGc();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  }

  memory(): GpuMemory {
    const out = new BigInt64Array(4);
    this.call("memory", this.lib.fns["memory"]!(out));
    return { live: Number(out[0]), peak: Number(out[1]), free: Number(out[2]), total: Number(out[3]) };
  }

  /** cuDNN's version (91400 for 9.14) where this build has the cuDNN attention route and cuDNN loads, else 0. */
  cudnnVersion(): number {
    return this.lib.fns["cudnnVersion"]!() as number;
  }

  resetPeak(): void {
    this.call("reset_peak", this.lib.fns["resetPeak"]!());
  }

  linear(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor {
    const K = last(x), M = rowsOf(x), N = w.shape[0]!;
    expectShape("linear", "w", w, [N, K]);
    if (bias) expectShape("linear", "bias", bias, [N]);
    const y = this.empty([...x.shape.slice(0, -1), N], "a linear output");
    const xb = w.dtype === "bf16" ? this.bf16Of(x, true) : null;
    const xf = w.dtype === "bf16" ? x : this.asF32(x);
    this.call("linear", this.lib.fns["linear"]!(this.h(xb ?? xf), this.h(w), this.h(bias), this.h(y), M, K, N));
    if (xf !== x) xf.dispose();
    return y;
  }

  /**
   * Decode's projections of one x in one launch (gemv.cu's many-matrix kernels): a few rows, bf16
   * weights, no biases. Anything else, or a product that kernel does not take, runs one linear each.
   */
  linearMany(x: Tensor, ws: readonly Tensor[], biases: readonly (Tensor | null | undefined)[], hints: readonly (ProductInputHint | undefined)[] = []): Tensor[] {
    const K = last(x), M = rowsOf(x);
    // MHA2MLA_LINEAR_MANY=0: one linear each (the A/B of the fused launch).
    const fused = process.env["MHA2MLA_LINEAR_MANY"] !== "0" && ws.length >= 2 && ws.length <= 4 && M <= gemvRows() && biases.every((b) => !b) && ws.every((w) => w.dtype === "bf16" && w.shape.length === 2 && w.shape[1] === K);
    if (fused) {
      const ys = ws.map((w, i) => this.empty([...x.shape.slice(0, -1), w.shape[0]!], "a linear output", this.productInputDtype(hints[i])));
      const xb = this.bf16Of(x, true);
      const status = this.lib.fns["linearMany"]!(this.h(xb ?? x), ws.map((w) => this.h(w)), ys.map((y) => this.h(y)), ws.length, M, K) as number;
      if (status === 0) return ys;
      for (const y of ys) y.dispose();
      // Only a product the kernel does not take (MLA_ERR_ARGUMENT = 1) runs one linear each; a CUDA failure is one.
      if (status !== 1) this.call("linearMany", status);
    }
    return ws.map((w, i) => this.linear(x, w, biases[i] ?? null));
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number, hint?: ProductInputHint): Tensor {
    const D = last(x);
    expectShape("rmsnorm", "w", w, [D]);
    const y = this.empty(x.shape, "an rmsnorm output", this.productInputDtype(hint));
    this.call("rmsnorm", this.lib.fns["rmsnorm"]!(this.h(x), this.h(w), this.h(y), rowsOf(x), D, eps));
    return y;
  }

  private ropeCall(op: string, x: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims: number | undefined, sign: number): Tensor {
    const [T, H, Dh] = x.shape as [number, number, number];
    expectShape(op, "x", x, [positions.length, null, null]);
    const rd = rotaryDims ?? Dh;
    if (rd % 2 !== 0 || rd > Dh || (invFreq.length !== rd / 2 && invFreq.length !== (H * rd) / 2))
      throw new MlaError("BAD_ARGUMENT", `${op}: ${invFreq.length} frequencies for x [${x.shape}] with ${rd} rotary dims`, "pass rotaryDims/2 frequencies, or H × rotaryDims/2");
    const y = this.empty(x.shape, "a rope output");
    // No rotary dims (an MLA with zero rope pairs) or no elements: the identity, as on the CPU.
    if (rd === 0 || x.size === 0) {
      if (x.size) this.copyElements(y, 0, x, 0, x.size);
      return y;
    }
    this.call(op, this.lib.fns["rope"]!(this.h(x), this.h(y), positions, invFreq, invFreq.length, T, H, Dh, rd, sign));
    return y;
  }

  rope(x: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor {
    return this.ropeCall("rope", x, positions, invFreq, rotaryDims, 1);
  }

  ropeBackward(dy: Tensor, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Tensor {
    return this.ropeCall("ropeBackward", dy, positions, invFreq, rotaryDims, -1);
  }

  private copyCols(x: Tensor, y: Tensor, M: number, Nx: number, offx: number, Ny: number, offy: number, w: number): void {
    this.call("copy_cols", this.lib.fns["copyCols"]!(this.h(x), this.h(y), M, Nx, offx, Ny, offy, w));
  }

  concatLast(a: Tensor, b: Tensor): Tensor {
    const A = last(a), Bn = last(b);
    if (a.shape.length !== b.shape.length || a.shape.slice(0, -1).some((d, i) => d !== b.shape[i]))
      throw new MlaError("BAD_ARGUMENT", `concatLast: [${a.shape}] and [${b.shape}] differ before the last axis`, "this is a bug in the caller");
    const M = rowsOf(a);
    const y = this.empty([...a.shape.slice(0, -1), A + Bn], "a concatenation");
    this.copyCols(a, y, M, A, 0, A + Bn, 0, A);
    this.copyCols(b, y, M, Bn, 0, A + Bn, A, Bn);
    return y;
  }

  splitLast(x: Tensor, a: number): [Tensor, Tensor] {
    const N = last(x), M = rowsOf(x);
    const p = this.empty([...x.shape.slice(0, -1), a], "a split");
    const q = this.empty([...x.shape.slice(0, -1), N - a], "a split");
    this.copyCols(x, p, M, N, 0, a, 0, a);
    this.copyCols(x, q, M, N, a, N - a, 0, N - a);
    return [p, q];
  }

  latentAttention(qr: Tensor, kr: Tensor, qc: Tensor, c: Tensor, opts: AttentionOptions): Tensor {
    const { T, H, Dr, S, Hkv, L } = latentAttentionDims(qr, kr, qc, c);
    const o = this.empty([T, H, L], "a latent attention output");
    if (T === 1 && S > 0) {
      this.call("latent_attention_decode", this.lib.fns["latentAttentionDecode"]!(this.h(qr), this.h(kr), this.h(qc), this.h(c), this.h(o), S, H, Hkv, Dr, L, opts.scale, opts.queryOffset, attentionWindow("latent_attention_decode", opts.window)));
      return o;
    }
    this.call("latent_attention", this.lib.fns["latentAttention"]!(this.h(qr), this.h(kr), this.h(qc), this.h(c), this.h(o), T, S, H, Hkv, Dr, L, opts.scale, opts.queryOffset, attentionWindow("latent_attention", opts.window)));
    return o;
  }

  attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
    return this.runAttention(q, k, v, opts, false).o;
  }

  /** The whole batch in one native call (strided-batched GEMMs per sequence issued from C over the ragged caches, decode_batch.cu). */
  attentionDecodeBatch(q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
    const { B, H, Hkv, Dh, Dv } = attentionDecodeBatchDims(q, k, v, opts);
    if (process.env["MHA2MLA_DECODE_BATCH"] === "rows") return attentionDecodeByRows(this, q, k, v, checkFloatRows(opts, k));
    const o = this.empty([B, H, Dv], "a batched decode attention output");
    this.call("decode_attention_batch", this.lib.fns["decodeAttentionBatch"]!(this.h(q), k.map((t) => this.h(t)), Hkv, Dh, null, null, 0, 0, v.map((t) => this.h(t)), Hkv, Dv, opts.positions, this.h(o), B, H, opts.scale, attentionWindow("decode_attention_batch", opts.window)));
    return o;
  }

  /** MLA's batch in one native call: the latent is both the first key part (one group) and the value. */
  latentAttentionDecodeBatch(qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions, hint?: ProductInputHint): Tensor {
    const { B, H, Hkv, Dr, L } = latentAttentionDecodeBatchDims(qr, kr, qc, c, opts);
    if (process.env["MHA2MLA_DECODE_BATCH"] === "rows") return latentAttentionDecodeByRows(this, qr, kr, qc, c, checkFloatRows(opts, c));
    const window = attentionWindow("decode_attention_batch", opts.window);
    const latents = c.map((t) => this.h(t));
    const rope = kr.map((t) => this.h(t));
    const run = (dtype: number): [Tensor, number] => {
      const o = this.empty([B, H, L], "a batched latent attention output", dtype);
      return [o, this.lib.fns["decodeAttentionBatch"]!(this.h(qc), latents, 1, L, this.h(qr), rope, Hkv, Dr, latents, 1, L, opts.positions, this.h(o), B, H, opts.scale, window) as number];
    };
    // A bf16 output only the fused kernel writes (bf16 caches); where it does not take the call (status 1, nothing
    // launched) the float32 one.
    if (c[0]?.dtype === "bf16" && this.productInputDtype(hint) === BF16) {
      const [o, status] = run(BF16);
      if (status === 0) return o;
      o.dispose();
      if (status !== 1) this.call("decode_attention_batch", status);
    }
    const [o, status] = run(F32);
    this.call("decode_attention_batch", status);
    return o;
  }

  /** Row b of src [B, n] into dst[b] at element offsets[b] (each sequence's new row into its own cache buffer). */
  scatterRows(src: Tensor, dst: readonly Tensor[], offsets: readonly number[]): void {
    const B = dst.length;
    if (src.shape[0] !== B || offsets.length !== B) throw new MlaError("BAD_ARGUMENT", `scatterRows: [${src.shape}] for ${B} destinations`, "this is a bug in the caller");
    this.call("scatter_rows", this.lib.fns["scatterRows"]!(this.h(src), dst.map((t) => this.h(t)), BigInt64Array.from(offsets, BigInt), B, src.size / B));
  }

  /** The fused bf16 kernels keep their row log-sum-exp [B·H·T], so the backward skips a forward pass. */
  attentionForTraining(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): { o: Tensor; saved: AttentionSaved | null } {
    return this.runAttention(q, k, v, opts, true);
  }

  private runAttention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions, keep: boolean): { o: Tensor; saved: AttentionSaved | null } {
    const [T, H, Dh] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const Dv = last(v);
    expectShape("attention", "k", k, [S, Hkv, Dh]);
    expectShape("attention", "v", v, [S, Hkv, Dv]);
    const o = this.empty([T, H, Dv], "an attention output");
    const B = batchOf("attention", opts, T, S);
    if (T === 1 && S > 0) {
      this.call("attention_decode", this.lib.fns["attentionDecode"]!(this.h(q), this.h(k), this.h(v), this.h(o), S, H, Hkv, Dh, Dv, opts.scale, opts.queryOffset, attentionWindow("attention_decode", opts.window)));
      return { o, saved: null };
    }
    const lse = keep && opts.bf16 ? this.empty([H * T], "attention statistics") : null;
    const kept = new Int32Array(1);
    // In a bf16Inputs arena, q, k, v are rounded once into copies kept with them (the backward reads
    // them again), and o comes back with its own bf16 copy (what cuDNN writes; o_proj and the backward read it).
    const [q16, k16, v16] = opts.bf16 ? [q, k, v].map((t) => this.bf16Of(t, true)) : [null, null, null];
    const o16 = opts.bf16 && this.bf16InputArenas > 0 ? this.empty([o.size], "a bf16 copy of an attention output", BF16, false) : null;
    this.call("attention", this.lib.fns["attention"]!(this.h(q), this.h(k), this.h(v), this.h(o), B, T / B, S / B, H, Hkv, Dh, Dv, opts.scale, opts.queryOffset, attentionWindow("attention", opts.window), opts.bf16 ? 1 : 0, this.h(lse), kept, this.h(q16), this.h(k16), this.h(v16), this.h(o16)));
    if (o16) (o.storage as DeviceBuffer).bf16 = o16;
    if (lse && !kept[0]) this.free(lse);
    return { o, saved: lse && kept[0] ? { o, lse, kind: kept[0] } : null };
  }

  headLinear(x: Tensor, w: Tensor, hint?: ProductInputHint): Tensor {
    return this.headProducts("head_linear", "headLinear", x, w, hint, false);
  }

  headLinearKN(x: Tensor, w: Tensor, hint?: ProductInputHint): Tensor {
    return this.headProducts("head_linear_kn", "headLinearKN", x, w, hint, true);
  }

  /** headLinear(KN): bf16 weights read x as it is (f32 or bf16) and may write y in bf16 (hint); f32 weights take f32. */
  private headProducts(op: string, fn: string, x: Tensor, w: Tensor, hint: ProductInputHint | undefined, kMajor: boolean): Tensor {
    const { T, H, K, G, N } = headLinearDims(x, w, kMajor);
    const bf16 = w.dtype === "bf16";
    const xin = bf16 ? (this.bf16Of(x, false) ?? x) : this.asF32(x);
    const y = this.empty([T, H, N], "a per-head product", bf16 ? this.productInputDtype(hint) : F32);
    this.call(op, this.lib.fns[fn]!(this.h(xin), this.h(w), this.h(y), T, H, G, K, N));
    if (!bf16 && xin !== x) xin.dispose();
    return y;
  }

  swiglu(gate: Tensor, up: Tensor, hint?: ProductInputHint): Tensor {
    expectShape("swiglu", "up", up, gate.shape);
    const y = this.empty(gate.shape, "a swiglu output", this.productInputDtype(hint));
    this.call("swiglu", this.lib.fns["swiglu"]!(this.h(gate), this.h(up), this.h(y), gate.size));
    return y;
  }

  add(a: Tensor, b: Tensor): Tensor {
    expectShape("add", "b", b, a.shape);
    const y = this.empty(a.shape, "a sum");
    this.call("add", this.lib.fns["axpby"]!(this.h(a), this.h(b), this.h(y), 1, 1, a.size));
    return y;
  }

  scale(x: Tensor, s: number): Tensor {
    const y = this.empty(x.shape, "a scaled tensor");
    this.call("scale", this.lib.fns["axpby"]!(this.h(x), null, this.h(y), s, 0, x.size));
    return y;
  }

  embedding(table: Tensor, ids: Int32Array): Tensor {
    const [V, D] = table.shape as [number, number];
    const y = this.empty([ids.length, D], "an embedding output");
    const status = this.lib.fns["embedding"]!(this.h(table), ids, this.h(y), ids.length, V, D) as number;
    if (status !== 0) this.fail("embedding", "the tokenizer and the model do not match", status);
    return y;
  }

  crossEntropy(logits: Tensor, targets: Int32Array): Float64Array {
    const [V, T] = lossRows(logits, targets);
    const loss = new Float64Array(T);
    if (this.blocking(() => this.lib.fns["crossEntropy"]!(this.h(logits), targets, loss, null, 0, T, V)) !== 0) this.fail("crossEntropy", "the tokenizer and the model do not match");
    return loss;
  }

  rowLogprobs(logits: Tensor, targets: Int32Array, top: number): { logprob: Float32Array; topIds: Int32Array; topLogprobs: Float32Array } {
    const V = last(logits), T = rowsOf(logits);
    if (targets.length !== T) throw new MlaError("BAD_ARGUMENT", `rowLogprobs: ${targets.length} targets for ${T} rows`, "one target (or −1) per row");
    const bad = targets.findIndex((t) => t < -1 || t >= V);
    if (bad >= 0) throw new MlaError("BAD_ARGUMENT", `rowLogprobs: target id ${targets[bad]} of row ${bad} is outside the model's vocabulary of ${V}`, "the tokenizer and the model do not match");
    const logprob = new Float32Array(T), topIds = new Int32Array(T * top), topLogprobs = new Float32Array(T * top);
    this.call("row_logprobs", this.blocking(() => this.lib.fns["rowLogprobs"]!(this.h(logits), targets, T, V, top, logprob, topIds, topLogprobs)));
    return { logprob, topIds, topLogprobs };
  }

  rowArgmax(logits: Tensor): Int32Array {
    const V = last(logits), T = rowsOf(logits);
    const ids = new Int32Array(T);
    this.call("row_argmax", this.blocking(() => this.lib.fns["rowArgmax"]!(this.h(logits), T, V, ids)));
    return ids;
  }

  gatherCols(x: Tensor, idx: Int32Array): Tensor {
    const N = last(x), M = rowsOf(x);
    const y = this.empty([...x.shape.slice(0, -1), idx.length], "gathered columns");
    this.call("gather_cols", this.lib.fns["gatherCols"]!(this.h(x), idx, this.h(y), M, N, idx.length));
    return y;
  }

  linearBackward(x: Tensor, w: Tensor, dy: Tensor, need: LinearBackwardNeed) {
    const K = last(x), M = rowsOf(x), N = w.shape[0]!;
    expectShape("linearBackward", "dy", dy, [...x.shape.slice(0, -1), N]);
    if (need.dwInto) expectShape("linearBackward", "dwInto", need.dwInto, [N, K]);
    if (need.dxInto && need.dxInto.size !== x.size) throw new MlaError("BAD_ARGUMENT", `linearBackward: dxInto [${need.dxInto.shape}] for x [${x.shape}]`, "this is a bug in the caller");
    const into = need.w && need.dwInto ? need.dwInto : null;
    const dxInto = need.x && need.dxInto ? need.dxInto : null;
    const dx = need.x && !dxInto ? this.empty(x.shape, "dx") : null;
    const dw = need.w && !into ? this.empty([N, K], "dw") : null;
    const db = need.bias ? this.empty([N], "db") : null;
    const xb = w.dtype === "bf16" ? this.bf16Of(x, false) : null;
    const [xf, dyf] = w.dtype === "bf16" ? [x, need.bias ? this.asF32(dy) : dy] : [this.asF32(x), this.asF32(dy)];
    this.call("linear_backward", this.lib.fns["linearBackward"]!(this.h(xb ?? xf), this.h(w), this.h(dyf), this.h(dxInto ?? dx), this.h(into ?? dw), this.h(db), M, K, N, dxInto ? 1 : 0, into && !need.dwOverwrite ? 1 : 0));
    for (const t of [xf, dyf]) if (t !== x && t !== dy) t.dispose();
    return { dx, dw, db };
  }

  crossEntropyFused(logits: Tensor, targets: Int32Array, scale: number): { loss: Float64Array; grad: Tensor } {
    const [V, T] = lossRows(logits, targets);
    const loss = new Float64Array(T);
    const grad = this.empty(logits.shape, "a cross-entropy gradient");
    if (this.blocking(() => this.lib.fns["crossEntropy"]!(this.h(logits), targets, loss, this.h(grad), scale, T, V)) !== 0) this.fail("crossEntropy", "the tokenizer and the model do not match");
    return { loss, grad };
  }

  crossEntropyDevice(logits: Tensor, targets: Int32Array, scale: number, losses: Tensor, offset: number, gradDtype: "f32" | "bf16"): Tensor {
    const [V, T] = lossRows(logits, targets);
    const grad = this.empty(logits.shape, "a cross-entropy gradient", gradDtype === "bf16" ? BF16 : F32);
    if (this.lib.fns["crossEntropyDevice"]!(this.h(logits), targets, this.h(losses), offset, this.h(grad), scale, T, V) !== 0) this.fail("crossEntropy", "the tokenizer and the model do not match");
    return grad;
  }

  rmsnormBackward(x: Tensor, w: Tensor, eps: number, dy: Tensor) {
    const D = last(x);
    const dx = this.empty(x.shape, "dx");
    const dw = this.empty([D], "dw");
    this.call("rmsnorm_backward", this.lib.fns["rmsnormBackward"]!(this.h(x), this.h(w), this.h(dy), this.h(dx), this.h(dw), rowsOf(x), D, eps));
    return { dx, dw };
  }

  swigluBackward(gate: Tensor, up: Tensor, dy: Tensor, hint?: ProductInputHint) {
    const dgate = this.empty(gate.shape, "dgate", this.productInputDtype(hint));
    const dup = this.empty(up.shape, "dup", this.productInputDtype(hint));
    this.call("swiglu_backward", this.lib.fns["swigluBackward"]!(this.h(gate), this.h(up), this.h(dy), this.h(dgate), this.h(dup), gate.size));
    return { dgate, dup };
  }

  embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor {
    const D = last(dy);
    expectShape("embeddingBackward", "dy", dy, [ids.length, D]);
    const out = this.empty([vocab, D], "an embedding gradient");
    this.call("embedding_backward", this.lib.fns["embeddingBackward"]!(ids, this.h(dy), this.h(out), ids.length, vocab, D));
    return out;
  }

  crossEntropyBackward(logits: Tensor, targets: Int32Array, scale: number): Tensor {
    const [V, T] = lossRows(logits, targets);
    const g = this.empty(logits.shape, "a cross-entropy gradient");
    if (this.blocking(() => this.lib.fns["crossEntropy"]!(this.h(logits), targets, null, this.h(g), scale, T, V)) !== 0) this.fail("crossEntropyBackward", "the tokenizer and the model do not match");
    return g;
  }

  scatterCols(dy: Tensor, idx: Int32Array, n: number): Tensor {
    const K = last(dy), M = rowsOf(dy);
    const y = this.empty([...dy.shape.slice(0, -1), n], "scattered columns");
    this.call("scatter_cols", this.lib.fns["scatterCols"]!(this.h(dy), idx, this.h(y), M, K, n));
    return y;
  }

  /** 2-norm calibration: acc[heads, Dh/2] += mean pair norms of y[T, heads, Dh], reduced on the GPU. */
  pairNorms(y: Tensor, T: number, heads: number, Dh: number, acc: Float64Array): void {
    this.call("pair_norms", this.lib.fns["pairNorms"]!(this.h(y), acc, T, heads, Dh));
  }

  /** Gradients of `attention` on the GPU (probabilities recomputed; from `saved` statistics where the forward kept them). */
  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, opts: AttentionOptions, saved?: AttentionSaved) {
    const [T, H, Dh] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const Dv = last(v);
    expectShape("attentionBackward", "k", k, [S, Hkv, Dh]);
    expectShape("attentionBackward", "v", v, [S, Hkv, Dv]);
    expectShape("attentionBackward", "dOut", dOut, [T, H, Dv]);
    const dq = this.empty(q.shape, "a query gradient"), dk = this.empty(k.shape, "a key gradient"), dv = this.empty(v.shape, "a value gradient");
    const B = batchOf("attentionBackward", opts, T, S);
    const [q16, k16, v16, o16] = opts.bf16 ? [q, k, v, saved?.o].map((t) => (t ? this.bf16Of(t, false) : null)) : [null, null, null, null];
    this.call("attention_backward", this.lib.fns["attentionBackward"]!(this.h(q), this.h(k), this.h(v), this.h(dOut), this.h(dq), this.h(dk), this.h(dv), B, T / B, S / B, H, Hkv, Dh, Dv, opts.scale, opts.queryOffset, attentionWindow("attention_backward", opts.window), opts.bf16 ? 1 : 0, this.h(saved?.o), this.h(saved?.lse), saved?.kind ?? 0, this.h(q16), this.h(k16), this.h(v16), this.h(o16)));
    return { dq, dk, dv };
  }

  /** Distillation loss per row (float64) and its gradient, on the GPU. */
  klDivergence(student: Tensor, teacher: Tensor, temperature: number, scale: number) {
    expectShape("klDivergence", "teacher", teacher, student.shape);
    const V = last(student), T = rowsOf(student);
    const loss = new Float64Array(T);
    const grad = this.empty(student.shape, "a distillation gradient");
    this.call("kl_divergence", this.blocking(() => this.lib.fns["klDivergence"]!(this.h(student), this.h(teacher), loss, this.h(grad), temperature, scale, T, V)));
    return { loss, grad };
  }
}

/** B of `opts.batch`, checked against the T query and S key rows it splits. */
function batchOf(op: string, opts: AttentionOptions, T: number, S: number): number {
  const B = opts.batch ?? 1;
  if (!Number.isInteger(B) || B < 1 || T % B !== 0 || S % B !== 0) throw new MlaError("BAD_ARGUMENT", `${op}: batch ${B} does not divide ${T} query rows and ${S} key rows`, "this is a bug in the caller");
  return B;
}

/** The flat training state's kernels on the GPU (native/cuda/optim.cu). */
function cudaTraining(b: CudaBackend): TrainingKernels {
  const fns = b.lib.fns;
  const out = new Float64Array(1);
  return {
    zeros(n, what, dtype = "f32") {
      const t = b.empty([n], what, dtype === "bf16" ? BF16 : F32);
      b.run("fill_zero", fns["fillZero"]!(b.handle(t)));
      return t;
    },
    view: (flat, offset, shape) => b.viewOf(flat, offset, shape.reduce((x, y) => x * y, 1), shape),
    copyInto: (dst, offset, src) => b.copyElements(dst, offset, src, 0, src.size),
    cast: (src, dst) => b.run("cast", fns["cast"]!(b.handle(src), b.handle(dst))),
    addInto: (dst, src) => {
      if (dst.size !== src.size) throw new MlaError("BAD_ARGUMENT", `addInto: [${src.shape}] into [${dst.shape}]`, "this is a bug in the caller");
      b.run("add_into", fns["axpby"]!(b.handle(dst), b.handle(src), b.handle(dst), 1, 1, dst.size));
    },
    fillZero: (t) => b.run("fill_zero", fns["fillZero"]!(b.handle(t))),
    sumSquares(t) {
      b.run("sum_squares", b.blocking(() => fns["sumSquares"]!(b.handle(t), out)));
      return out[0]!;
    },
    adamw: (p, g, m, v, lr, h, c1, c2, gradScale, shadow) =>
      b.run("adamw", fns["adamw"]!(b.handle(p), b.handle(g), b.handle(m), b.handle(v), shadow ? b.handle(shadow) : null, lr, h.beta1, h.beta2, h.eps, h.weightDecay, c1, c2, gradScale)),
  };
}

/** The float64 conversion routines on the GPU. */
export function cudaLinalg(lib: CudaLib): Linalg {
  // Asynchronous calls run on koffi worker threads; one at a time, since they share the stream and
  // the cuBLAS/cuSOLVER handles.
  let queue: Promise<unknown> = Promise.resolve();
  const queued = <T>(op: string, fn: Fn, args: unknown[], result: () => T): Promise<T> => {
    const asyncFn = fn as unknown as { async: (...a: unknown[]) => void };
    const run = () =>
      new Promise<T>((resolve, reject) => {
        asyncFn.async(...args, (err: unknown, status: number) => {
          try {
            if (err) throw err;
            ok(op, status);
            resolve(result());
          } catch (e) {
            reject(e);
          }
        });
      });
    const job = queue.then(run, run);
    queue = job.catch(() => {});
    return job;
  };
  const ok = (op: string, status: number) => {
    if (status !== 0) throw cudaError(lib, op, "use --device cpu to factor on the CPU", "use --device cpu to factor on the CPU");
  };
  return {
    name: "cuda",
    gram(A, M, N) {
      const G = new Float64Array(N * N);
      ok("gram_f64", lib.fns["gramF64"]!(A, G, M, N));
      return G;
    },
    eigen(S, n) {
      const values = new Float64Array(n);
      const vectors = new Float64Array(n * n);
      ok("symmetric_eigen", lib.fns["symmetricEigen"]!(S, values, vectors, n));
      return { values, vectors };
    },
    matmul(X, Y, a, b, c) {
      const Z = new Float64Array(a * c);
      ok("matmul_f64", lib.fns["matmulF64"]!(X, Y, Z, a, b, c));
      return Z;
    },
    factorCols(A, M, N, k) {
      const down = new Float64Array(k * N);
      const up = new Float64Array(M * k);
      const values = new Float64Array(N);
      ok("factor_cols", lib.fns["factorCols"]!(A, M, N, k, down, up, values));
      return { down, up, values };
    },
    factorColsAsync(A, M, N, k) {
      const down = new Float64Array(k * N);
      const up = new Float64Array(M * k);
      const values = new Float64Array(N);
      return queued("factor_cols", lib.fns["factorCols"]!, [A, M, N, k, down, up, values], () => ({ down, up, values }));
    },
    factorKvAsync(wk, wv, D, nopeRows, k) {
      const rowsK = wk.length / D, Mv = wv.length / D, M = nopeRows.length + Mv;
      const down = new Float32Array(k * D);
      const up = new Float32Array(M * k);
      const values = new Float64Array(D);
      return queued("factor_kv", lib.fns["factorKv"]!, [wk, wv, rowsK, Mv, D, nopeRows, nopeRows.length, k, down, up, values], () => ({ down, up, values }));
    },
  };
}
