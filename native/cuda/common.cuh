// Shared state and checks of the CUDA build: one device, one stream, cuBLAS and cuSOLVER handles,
// device buffers behind opaque handles (mla_cuda_buf), allocated from CUDA's stream-ordered pool
// (cudaMallocAsync with an unlimited release threshold: a caching allocator without our own free lists).
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <cfloat>
#include <cstdint>
#include <string>
#include "mla.h"

struct mla_cuda_buf {
  void* ptr;
  int64_t n;      // elements
  int32_t dtype;  // MLA_F32, MLA_BF16, MLA_F64, MLA_I32
  bool owner;     // false for views into another buffer
};

namespace mla {
struct Context {
  int device = -1;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  void* blas_workspace = nullptr;
  int64_t live_bytes = 0;
  int64_t peak_bytes = 0;
  std::string info;
};
// cuBLAS's workspace: 32 MiB, its recommendation for Hopper.
constexpr size_t kBlasWorkspace = 32u << 20;
Context* ctx();  // nullptr before a successful mla_cuda_init
mla_status fail(mla_status code, const char* file, int line, const std::string& msg);
const char* cublas_name(cublasStatus_t s);
size_t dtype_size(int32_t dtype);
// The device's SM count, read once (1 if the query fails): what the decode kernels size their grids by.
int sm_count();
// Device scratch of at least `bytes`, valid until the next call on this thread (stream-ordered).
void* scratch(size_t bytes, mla_status* st);
// The decode step being captured into a CUDA graph (graph.cu), or null. While one is open, ops take
// their per-step inputs from the graph (step_ids / step_positions: null, and the capture refused, when
// the host values are not the step's), their fixed tables from capture_constant, and never stage.
struct StepCapture;
StepCapture* capturing();
mla_status refuse(const std::string& why);
const int32_t* step_ids(const int32_t* host, int64_t n);
const int32_t* step_positions(const int32_t* host, int64_t n);
const void* capture_constant(const void* data, size_t bytes, mla_status* st);
void* capture_scratch(size_t bytes, mla_status* st);
void capture_made(mla_cuda_buf* b);
// Whether the free of `b` (made before the capture) was deferred to the capture's end.
bool capture_free(mla_cuda_buf* b);
// Copies `bytes` of host data to `device` in stream order. Up to kStageLimit bytes go through a ring of
// pinned host slots: a cudaMemcpyAsync from pageable memory may synchronize with the stream, which would
// put the host in lockstep with the GPU at every op that sends positions, ids or indices.
constexpr size_t kStageLimit = 4u << 20;
mla_status stage_to_device(const void* data, size_t bytes, void* device);
// Milliseconds stage_to_device has blocked the host waiting for a slot still being copied.
double ring_waited_ms();
// Decode's products against bf16 weights for a few rows (gemv.cu): whether the kernel takes the problem
// (rows per problem, K a multiple of 8, aligned rows), and y [T, P·hpg, N] = x [T, P·hpg, K] · w[p]ᵀ.
bool gemv_takes(const void* x, bool x_bf16, const void* w, int64_t rows, int64_t K, int64_t N, int64_t P);
mla_status gemv_bf16(const void* x, bool x_bf16, const __nv_bfloat16* w, void* y, bool y_bf16, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N);
// MLA's key up-projection stored k-major (head_kn.cu): whether the kernel takes the problem (G ≤ 65,535 groups,
// 1 to MHA2MLA_HEAD_KN_ROWS rows per group (default 4, at most 8), K ≤ 512, N a multiple of 8, w aligned), and y [T, G·hpg, N] = x [T, G·hpg, K] · w[g] with w [G, K, N].
bool head_kn_takes(const void* w, int64_t G, int64_t rows, int64_t K, int64_t N);
mla_status head_kn_bf16(const void* x, bool x_bf16, const __nv_bfloat16* w, void* y, bool y_bf16, int64_t G, int64_t rows, int64_t hpg, int64_t K, int64_t N);
// y = float(x) and y = bf16(x) (round to nearest even) over n elements, in stream order.
mla_status widen_bf16(const __nv_bfloat16* x, float* y, int64_t n);
mla_status narrow_f32(const float* x, __nv_bfloat16* y, int64_t n);
// A stream-ordered device allocation, freed in stream order with the object; dev_alloc fails with
// MLA_ERR_MEMORY naming `what` and the size.
struct DevMem {
  void* p = nullptr;
  ~DevMem();
};
mla_status dev_alloc(DevMem& m, size_t bytes, const char* what);
// Which route T > 1 attention takes, from MHA2MLA_CUDA_ATTENTION (read at every call, so a benchmark or
// test compares them in one process): unset (Auto), cuDNN for training forwards and backwards, our
// fused kernels for inference forwards where they take the head dims (else cuDNN where it takes the
// problem, else the chunked GEMMs); cudnn, cuDNN's fused attention
// where this build has cuDNN and it takes the problem (bf16, causal), else as fused; fused, our tensor-core kernels where
// they take the inputs (bf16 and their head dims) and the chunked GEMMs elsewhere; gemm, the chunked
// GEMMs always; flash and rows, the older float32 kernels of kernels.cu (one fused block per query
// tile, one block per row).
enum class AttentionRoute { Auto, Fused, Cudnn, Gemm, Flash, Rows };
AttentionRoute attention_route();
// bf16 copies of attention's tensors that the caller keeps (null where it keeps none). Inputs read
// from them skip their rounding; o, in a forward, is filled with the output rounded to bf16 (cuDNN
// writes it there directly), and read back by the backward instead of rounding o again.
struct AttentionBf16 {
  const __nv_bfloat16* q = nullptr;
  const __nv_bfloat16* k = nullptr;
  const __nv_bfloat16* v = nullptr;
  __nv_bfloat16* o = nullptr;
};
// The kept copies from the C API's buffers: each null, or bf16 with its tensor's n elements.
mla_status kept_bf16(AttentionBf16& kept, const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, const mla_cuda_buf* o, int64_t nq, int64_t nk, int64_t nv, int64_t no, const char* op);
// Causal GQA attention of B sequences as cuBLAS GEMMs over chunks of queries (attention_gemm.cu):
// q[B·T,H,Dh], k[B·S,Hkv,Dh], v[B·S,Hkv,Dv] → o[B·T,H,Dv]; bf16: GEMM inputs rounded to bf16; handed to
// cuDNN when `cudnn` (the caller's use_cudnn, decided once per call), else to the fused kernels where
// use_mma says so (lse: the statistics of whichever fused route ran, else unused).
mla_status attention_gemm(const float* q, const float* k, const float* v, float* o, float* lse, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, bool bf16, bool cudnn, const AttentionBf16& kept);
// The fused tensor-core route (attention_mma.cu) on bf16 copies of q, k, v (and dout): whether it takes
// the head dims; the forward (lse, when set: the row log-sum-exp the backward can reuse, [B·H, T]); the
// backward (o and saved_lse: the forward's output and lse, or null to recompute them; lse and delta:
// [B·H, T] float32 scratch each; dq, dk, dv overwritten, deterministically).
bool attention_mma_dims(int64_t Dh, int64_t Dv);
// Whether bf16 attention with these head dims takes the fused route (MHA2MLA_CUDA_ATTENTION=gemm: never).
bool use_mma(bool bf16, int64_t Dh, int64_t Dv);
mla_status attention_mma(const void* q, const void* k, const void* v, float* o, float* lse, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window);
// cuDNN's fused attention (attention_cudnn.cu; bf16 q, k, v, dout as the mma route takes them):
// whether this build has it and it loads; whether the route is chosen and cuDNN takes the problem
// (causal with off = 0 or S − T, no window; builds and caches the forward graph with statistics when
// `stats`, the graph the call will run, so inference never builds the training graph); the forward (o float32;
// o_bf16, when set, receives cuDNN's bf16 output as is; stats, when set, cuDNN's natural-log
// statistics [B·H, T], which only its backward reads); the backward (o, or its bf16 copy o_bf16, and
// saved_stats from its forward, or null to recompute; `taken` false when cuDNN refused the backward
// graph, nothing written, and the caller runs another route).
bool cudnn_available();
bool use_cudnn(bool bf16, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, bool stats);
mla_status cudnn_attention_forward(const void* q, const void* k, const void* v, float* o, __nv_bfloat16* o_bf16, float* stats, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off);
mla_status cudnn_attention_backward(const void* q, const void* k, const void* v, const void* dout, const float* o, const __nv_bfloat16* o_bf16, const float* saved_stats, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, bool* taken);
// The fused latent decode (latent_decode.cu) for bf16 caches: whether it takes a latent width L, Hkv
// rope groups of Dr dims (MHA2MLA_LATENT_DECODE=gemm: never), and the call: per sequence b its latent rows
// cs[b] [.., L] and rope rows krs[b] [.., Hkv, Dr] from row lo[b] on, n[b] visible rows (pos[b] the
// query's position, window the sliding window: what a decode graph recomputes them from); qc [B, H, L]
// and qr [B, H, Dr] float32 → o [B, H, L], float32 or (obf16) bf16.
bool latent_decode_takes(int64_t L, int64_t H, int64_t Hkv, int64_t Dr);
mla_status latent_decode(const __nv_bfloat16* const* cs, const __nv_bfloat16* const* krs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* qc, const float* qr, void* o, bool obf16, int64_t B, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale);
// Its kernel with the warps split by role (latent_decode_roles.cu), which latent_decode calls where it
// takes the shape unless MHA2MLA_LATENT_KERNEL=tiles (read per call) asks for the tile-loop kernel.
bool latent_decode_roles_takes(int64_t L, int64_t H, int64_t Hkv, int64_t Dr);
mla_status latent_decode_roles(const __nv_bfloat16* const* cs, const __nv_bfloat16* const* krs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* qc, const float* qr, void* o, bool obf16, int64_t B, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale);
// MLA decode straight from int8 latent stores (kv_quant.cuh rows; latent_decode_q8.cu), which
// decode_attention_batch takes for int8 caches of the shapes it takes (else the visible rows are
// dequantized for the bf16 kernels): cs[b] [≥ pos_b + 1 rows of L], krs[b] [rows of Hkv·Dr] (null
// without rope), both 16-byte aligned; qc, qr 16-byte aligned.
bool latent_decode_q8_takes(int64_t L, int64_t H, int64_t Hkv, int64_t Dr);
mla_status latent_decode_q8(const unsigned char* const* cs, const unsigned char* const* krs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* qc, const float* qr, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale);
// The MHA/GQA decode kernel (mha_decode.cu) for bf16 caches: whether it takes H query heads over Hkv
// KV heads of Dh dims (the default for GQA at head dim 64, see mha_decode.cu), and the call: per sequence b its key rows
// ks[b] and value rows vs[b] [.., Hkv, Dh] from row lo[b] on, n[b] visible rows (pos, window as for
// latent_decode); q [B, H, Dh] float32 → o [B, H, Dh] float32.
bool mha_decode_takes(int64_t H, int64_t Hkv, int64_t Dh);
mla_status mha_decode(const __nv_bfloat16* const* ks, const __nv_bfloat16* const* vs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* q, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dh, float scale);
// The same kernel over int8 stores (kv_quant.cuh rows of Hkv·Dh values; ks[b], vs[b] their bytes),
// which decode_attention_batch takes for MHA/GQA int8 caches of the shapes mha_decode_takes.
mla_status mha_decode_q8(const unsigned char* const* ks, const unsigned char* const* vs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* q, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dh, float scale);
mla_status attention_mma_backward(const void* q, const void* k, const void* v, const void* dout_bf16, const float* dout, const float* o, const float* saved_lse, float* lse, float* delta, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window);
}  // namespace mla

#define MLA_FAIL(code, msg) ::mla::fail(code, __FILE__, __LINE__, msg)
#define MLA_CHECK(cond, msg) \
  do {                       \
    if (!(cond)) return MLA_FAIL(MLA_ERR_ARGUMENT, msg); \
  } while (0)
#define CUDA_TRY(call)                                                                                       \
  do {                                                                                                       \
    cudaError_t e_ = (call);                                                                                 \
    if (e_ != cudaSuccess)                                                                                   \
      return MLA_FAIL(e_ == cudaErrorMemoryAllocation ? MLA_ERR_MEMORY : MLA_ERR_INTERNAL, std::string(#call) + ": " + cudaGetErrorName(e_) + " (" + cudaGetErrorString(e_) + ")"); \
  } while (0)
#define CUBLAS_TRY(call)                                                                                \
  do {                                                                                                  \
    cublasStatus_t s_ = (call);                                                                         \
    if (s_ != CUBLAS_STATUS_SUCCESS) return MLA_FAIL(MLA_ERR_INTERNAL, std::string(#call) + ": " + ::mla::cublas_name(s_)); \
  } while (0)
#define CUSOLVER_TRY(call)                                                                                        \
  do {                                                                                                            \
    cusolverStatus_t s_ = (call);                                                                                 \
    if (s_ != CUSOLVER_STATUS_SUCCESS) return MLA_FAIL(MLA_ERR_INTERNAL, std::string(#call) + ": cusolver status " + std::to_string((int)s_)); \
  } while (0)
#define NEED_CTX() \
  do {             \
    if (!::mla::ctx()) return MLA_FAIL(MLA_ERR_ARGUMENT, "CUDA backend not initialized: call mla_cuda_init first"); \
  } while (0)
#define KERNEL_CHECK() CUDA_TRY(cudaGetLastError())

// Warp and block reductions (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result.
static __device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
static __device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <bool IsMax>
static __device__ __forceinline__ float block_reduce(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = IsMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = IsMax ? -3.402823466e38f : 0.0f;
  for (int i = 0; i < nw; i++) r = IsMax ? fmaxf(r, red[i]) : r + red[i];
  return r;
}

// One block, in place on row[n]: softmax(scale·row) over [lo, hi], 0 elsewhere. `red` is [32] shared.
static __device__ void softmax_row(float* row, int64_t n, float scale, int64_t lo, int64_t hi, float* red) {
  float mx = -FLT_MAX;
  for (int64_t s = lo + threadIdx.x; s <= hi; s += blockDim.x) mx = fmaxf(mx, row[s] * scale);
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t s = lo + threadIdx.x; s <= hi; s += blockDim.x) z += expf(row[s] * scale - mx);
  z = block_reduce<false>(z, red);
  const float inv = z > 0 ? 1.0f / z : 0.0f;
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) row[s] = (s >= lo && s <= hi) ? expf(row[s] * scale - mx) * inv : 0.0f;
}


inline unsigned blocks_for(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }
