// Elementwise, normalization, RoPE, embedding, loss and attention kernels of the CUDA build.
// Attention for T > 1 runs as cuBLAS GEMMs over query chunks by default (decode.cu); a flash-style
// kernel (online softmax over key tiles in shared memory) and one block per query row and head are
// the alternatives (MHA2MLA_CUDA_ATTENTION); float32 accumulation throughout.
#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <cfloat>
#include <vector>
#include "common.cuh"

using mla::ctx;
#define S_ ctx()->stream

namespace {
// A host int32 array copied into a stream-ordered device allocation, freed with the object.
struct DevInts {
  int32_t* p = nullptr;
  ~DevInts() {
    if (p) cudaFreeAsync(p, S_);
  }
};
struct DevF64s {
  double* p = nullptr;
  ~DevF64s() {
    if (p) cudaFreeAsync(p, S_);
  }
};
template <typename T, typename H>
mla_status to_device(H& d, const T* host, int64_t n) {
  CUDA_TRY(cudaMallocAsync(&d.p, sizeof(T) * (n > 0 ? n : 1), S_));
  if (n > 0) return mla::stage_to_device(host, sizeof(T) * n, d.p);
  return MLA_OK;
}
#define TO_DEVICE(d, host, n)                        \
  do {                                               \
    mla_status st_ = to_device(d, host, n);          \
    if (st_ != MLA_OK) return st_;                   \
  } while (0)

bool is_f32(const mla_cuda_buf* b, int64_t n) { return b && b->dtype == MLA_F32 && b->n == n; }
// An output (or table) that may be bf16 where only bf16 products read it.
bool is_f32_or_bf16(const mla_cuda_buf* b, int64_t n) { return b && (b->dtype == MLA_F32 || b->dtype == MLA_BF16) && b->n == n; }
}  // namespace

#define F(b) ((float*)(b)->ptr)
#define CF(b) ((const float*)(b)->ptr)

// ---------------- 4-wide access ----------------
// The memory-bound kernels below move 4 consecutive elements per thread (one 16-byte float load,
// one 16- or 8-byte store) where the sizes are multiples of 4 and the buffers aligned, which is
// every activation of a training step (views at odd offsets take the scalar kernels). In the
// elementwise kernels each lane computes what the scalar kernel computes for its element (the same
// bits); RMSNorm's row sums add in another order than the scalar kernel's, so its last bits differ
// (one build always takes the same kernel for a tensor, so reruns stay bit-identical).
namespace {
bool aligned_for4(const void* p, size_t elem) { return (reinterpret_cast<uintptr_t>(p) % (4 * elem)) == 0; }
bool vec4(const mla_cuda_buf* b) { return b->n % 4 == 0 && aligned_for4(b->ptr, b->dtype == MLA_BF16 ? 2 : 4); }
__device__ __forceinline__ void store4(float* y, float4 v) { *reinterpret_cast<float4*>(y) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* y, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(y) = u;
}
__device__ __forceinline__ float4 load4(const float* x) { return *reinterpret_cast<const float4*>(x); }
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }
}  // namespace

// ---------------- elementwise ----------------
// Y is float, or bf16 where only bf16 products read the output (they would round it so anyway).
template <typename Y>
__global__ void k_swiglu(const float* g, const float* u, Y* y, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = (Y)silu_times(g[i], u[i]);
}
template <typename Y>
__global__ void k_swiglu4(const float* g, const float* u, Y* y, int64_t n4) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 a = load4(g + 4 * i), b = load4(u + 4 * i);
  store4(y + 4 * i, make_float4(silu_times(a.x, b.x), silu_times(a.y, b.y), silu_times(a.z, b.z), silu_times(a.w, b.w)));
}
// d/dg and d/du of silu(g)·u times dy, as (dg, du).
__device__ __forceinline__ float2 swiglu_grads(float g, float u, float dy) {
  const float sig = 1.0f / (1.0f + expf(-g));
  return make_float2(dy * u * sig * (1.0f + g * (1.0f - sig)), dy * g * sig);
}
// G: float, or bf16 where only bf16 products (the gate and up projections' backward) read the gradients.
template <typename G>
__global__ void k_swiglu_bwd(const float* g, const float* u, const float* dy, G* dg, G* du, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float2 r = swiglu_grads(g[i], u[i], dy[i]);
  dg[i] = (G)r.x;
  du[i] = (G)r.y;
}
template <typename G>
__global__ void k_swiglu_bwd4(const float* g, const float* u, const float* dy, G* dg, G* du, int64_t n4) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 a = load4(g + 4 * i), b = load4(u + 4 * i), d = load4(dy + 4 * i);
  const float2 r0 = swiglu_grads(a.x, b.x, d.x), r1 = swiglu_grads(a.y, b.y, d.y), r2 = swiglu_grads(a.z, b.z, d.z), r3 = swiglu_grads(a.w, b.w, d.w);
  store4(dg + 4 * i, make_float4(r0.x, r1.x, r2.x, r3.x));
  store4(du + 4 * i, make_float4(r0.y, r1.y, r2.y, r3.y));
}
__global__ void k_axpby(const float* a, const float* b, float* y, float sa, float sb, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = sa * a[i] + (b ? sb * b[i] : 0.0f);
}
__global__ void k_axpby4(const float* a, const float* b, float* y, float sa, float sb, int64_t n4) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 x = load4(a + 4 * i), z = b ? load4(b + 4 * i) : make_float4(0, 0, 0, 0);
  store4(y + 4 * i, b ? make_float4(sa * x.x + sb * z.x, sa * x.y + sb * z.y, sa * x.z + sb * z.z, sa * x.w + sb * z.w) : make_float4(sa * x.x + 0.0f, sa * x.y + 0.0f, sa * x.z + 0.0f, sa * x.w + 0.0f));
}

extern "C" mla_status mla_cuda_swiglu(const mla_cuda_buf* g, const mla_cuda_buf* u, mla_cuda_buf* y, int64_t n) {
  NEED_CTX();
  MLA_CHECK(is_f32(g, n) && is_f32(u, n) && is_f32_or_bf16(y, n), "swiglu: f32 buffers of n elements (y may be bf16)");
  const bool v4 = vec4(g) && vec4(u) && vec4(y);
  if (n && y->dtype == MLA_BF16 && v4) k_swiglu4<<<blocks_for(n / 4, 256), 256, 0, S_>>>(CF(g), CF(u), (__nv_bfloat16*)y->ptr, n / 4);
  else if (n && v4) k_swiglu4<<<blocks_for(n / 4, 256), 256, 0, S_>>>(CF(g), CF(u), F(y), n / 4);
  else if (n && y->dtype == MLA_BF16) k_swiglu<<<blocks_for(n, 256), 256, 0, S_>>>(CF(g), CF(u), (__nv_bfloat16*)y->ptr, n);
  else if (n) k_swiglu<<<blocks_for(n, 256), 256, 0, S_>>>(CF(g), CF(u), F(y), n);
  KERNEL_CHECK();
  return MLA_OK;
}
extern "C" mla_status mla_cuda_swiglu_backward(const mla_cuda_buf* g, const mla_cuda_buf* u, const mla_cuda_buf* dy, mla_cuda_buf* dg, mla_cuda_buf* du, int64_t n) {
  NEED_CTX();
  MLA_CHECK(is_f32(g, n) && is_f32(u, n) && is_f32(dy, n) && is_f32_or_bf16(dg, n) && is_f32_or_bf16(du, n) && dg->dtype == du->dtype, "swiglu_backward: f32 buffers of n elements (dg and du may both be bf16)");
  const bool v4 = vec4(g) && vec4(u) && vec4(dy) && vec4(dg) && vec4(du);
  using B16 = __nv_bfloat16;
  if (n && dg->dtype == MLA_BF16 && v4) k_swiglu_bwd4<<<blocks_for(n / 4, 256), 256, 0, S_>>>(CF(g), CF(u), CF(dy), (B16*)dg->ptr, (B16*)du->ptr, n / 4);
  else if (n && v4) k_swiglu_bwd4<<<blocks_for(n / 4, 256), 256, 0, S_>>>(CF(g), CF(u), CF(dy), F(dg), F(du), n / 4);
  else if (n && dg->dtype == MLA_BF16) k_swiglu_bwd<<<blocks_for(n, 256), 256, 0, S_>>>(CF(g), CF(u), CF(dy), (B16*)dg->ptr, (B16*)du->ptr, n);
  else if (n) k_swiglu_bwd<<<blocks_for(n, 256), 256, 0, S_>>>(CF(g), CF(u), CF(dy), F(dg), F(du), n);
  KERNEL_CHECK();
  return MLA_OK;
}
// y = sa·a + sb·b (b may be NULL): add and scale.
extern "C" mla_status mla_cuda_axpby(const mla_cuda_buf* a, const mla_cuda_buf* b, mla_cuda_buf* y, float sa, float sb, int64_t n) {
  NEED_CTX();
  MLA_CHECK(is_f32(a, n) && (!b || is_f32(b, n)) && is_f32(y, n), "axpby: f32 buffers of n elements");
  if (n && vec4(a) && (!b || vec4(b)) && vec4(y)) k_axpby4<<<blocks_for(n / 4, 256), 256, 0, S_>>>(CF(a), b ? CF(b) : nullptr, F(y), sa, sb, n / 4);
  else if (n) k_axpby<<<blocks_for(n, 256), 256, 0, S_>>>(CF(a), b ? CF(b) : nullptr, F(y), sa, sb, n);
  KERNEL_CHECK();
  return MLA_OK;
}

// ---------------- column moves: concat / split / gather / scatter along the last axis ----------------
// y[m, off_y + j] (row length Ny) = x[m, off_x + j] (row length Nx) for j < w.
__global__ void k_copy_cols(const float* x, float* y, int64_t M, int64_t Nx, int64_t offx, int64_t Ny, int64_t offy, int64_t w) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= M * w) return;
  const int64_t m = i / w, j = i % w;
  y[m * Ny + offy + j] = x[m * Nx + offx + j];
}
extern "C" mla_status mla_cuda_copy_cols(const mla_cuda_buf* x, mla_cuda_buf* y, int64_t M, int64_t Nx, int64_t offx, int64_t Ny, int64_t offy, int64_t w) {
  NEED_CTX();
  MLA_CHECK(is_f32(x, M * Nx) && is_f32(y, M * Ny) && offx + w <= Nx && offy + w <= Ny, "copy_cols: bad sizes");
  if (M * w) k_copy_cols<<<blocks_for(M * w, 256), 256, 0, S_>>>(CF(x), F(y), M, Nx, offx, Ny, offy, w);
  KERNEL_CHECK();
  return MLA_OK;
}
__global__ void k_gather_cols(const float* x, const int32_t* idx, float* y, int64_t M, int64_t N, int64_t K) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < M * K) y[i] = x[(i / K) * N + idx[i % K]];
}
// One thread per output row segment walks the K indices in order: repeated indices never race.
__global__ void k_scatter_cols(const float* dy, const int32_t* idx, float* y, int64_t M, int64_t K, int64_t N) {
  const int64_t m = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (m >= M) return;
  for (int64_t k = 0; k < K; k++) y[m * N + idx[k]] += dy[m * K + k];
}
// Distinct indices: one thread per element, neighbours read neighbours (the per-row walk above strides
// by N between the threads of a warp, which made the MLA query's column scatter 4× a gather).
__global__ void k_scatter_cols_distinct(const float* dy, const int32_t* idx, float* y, int64_t M, int64_t K, int64_t N) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < M * K) y[(i / K) * N + idx[i % K]] = dy[i];
}
extern "C" mla_status mla_cuda_gather_cols(const mla_cuda_buf* x, const int32_t* idx, mla_cuda_buf* y, int64_t M, int64_t N, int64_t K) {
  NEED_CTX();
  MLA_CHECK(is_f32(x, M * N) && is_f32(y, M * K) && (idx || K == 0), "gather_cols: bad sizes");
  for (int64_t k = 0; k < K; k++) MLA_CHECK(idx[k] >= 0 && idx[k] < N, "gather_cols: column " + std::to_string(idx[k]) + " outside [0, " + std::to_string(N) + ")");
  DevInts d;
  TO_DEVICE(d, idx, K);
  if (M * K) k_gather_cols<<<blocks_for(M * K, 256), 256, 0, S_>>>(CF(x), d.p, F(y), M, N, K);
  KERNEL_CHECK();
  return MLA_OK;
}
extern "C" mla_status mla_cuda_scatter_cols(const mla_cuda_buf* dy, const int32_t* idx, mla_cuda_buf* y, int64_t M, int64_t K, int64_t N) {
  NEED_CTX();
  MLA_CHECK(is_f32(dy, M * K) && is_f32(y, M * N) && (idx || K == 0), "scatter_cols: bad sizes");
  for (int64_t k = 0; k < K; k++) MLA_CHECK(idx[k] >= 0 && idx[k] < N, "scatter_cols: column " + std::to_string(idx[k]) + " outside [0, " + std::to_string(N) + ")");
  // A permutation (the MLA query's [rope | nope] order) scatters as a gather by its inverse, with no
  // zero fill; other distinct indices need the fill but no per-row walk.
  std::vector<int32_t> inverse(N, -1);
  bool distinct = true;
  for (int64_t k = 0; k < K && distinct; k++) {
    distinct = inverse[idx[k]] < 0;
    inverse[idx[k]] = (int32_t)k;
  }
  DevInts d;
  if (distinct && K == N) {
    TO_DEVICE(d, inverse.data(), N);
    if (M * N) k_gather_cols<<<blocks_for(M * N, 256), 256, 0, S_>>>(CF(dy), d.p, F(y), M, K, N);
    KERNEL_CHECK();
    return MLA_OK;
  }
  TO_DEVICE(d, idx, K);
  CUDA_TRY(cudaMemsetAsync(y->ptr, 0, sizeof(float) * M * N, S_));
  if (distinct && M * K) k_scatter_cols_distinct<<<blocks_for(M * K, 256), 256, 0, S_>>>(CF(dy), d.p, F(y), M, K, N);
  else if (M) k_scatter_cols<<<blocks_for(M, 128), 128, 0, S_>>>(CF(dy), d.p, F(y), M, K, N);
  KERNEL_CHECK();
  return MLA_OK;
}

// ---------------- RMSNorm ----------------
template <typename Y>
__global__ void k_rmsnorm(const float* x, const float* w, Y* y, int64_t D, float eps) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * D;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_reduce<false>(ss, red);
  const float inv = rsqrtf(ss / D + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) y[blockIdx.x * D + i] = (Y)(xr[i] * inv * w[i]);
}
// The same with 4 columns per thread (D a multiple of 4, rows aligned).
template <typename Y>
__global__ void k_rmsnorm4(const float* x, const float* w, Y* y, int64_t D, float eps) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * D;
  float ss = 0;
  for (int64_t i = 4 * threadIdx.x; i < D; i += 4 * blockDim.x) {
    const float4 v = load4(xr + i);
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  ss = block_reduce<false>(ss, red);
  const float inv = rsqrtf(ss / D + eps);
  for (int64_t i = 4 * threadIdx.x; i < D; i += 4 * blockDim.x) {
    const float4 v = load4(xr + i), g = load4(w + i);
    store4(y + blockIdx.x * D + i, make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w));
  }
}
// dx = inv·(w⊙dy − x̂·mean(x̂⊙w⊙dy)), x̂ = x·inv; the row's inv goes to inv_out for dw. No atomics:
// dw is reduced over rows in a fixed order (k_rmsnorm_dw_partial, k_sum_splits), so a training step
// gives the same bits every time, which resume's bit-identity needs.
__global__ void k_rmsnorm_bwd(const float* x, const float* w, const float* dy, float* dx, float* inv_out, int64_t D, float eps) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * D;
  const float* g = dy + blockIdx.x * D;
  float ss = 0, dot = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    ss += xr[i] * xr[i];
    dot += xr[i] * w[i] * g[i];
  }
  ss = block_reduce<false>(ss, red);
  dot = block_reduce<false>(dot, red);
  const float inv = rsqrtf(ss / D + eps);
  const float c = dot * inv * inv * inv / D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) dx[blockIdx.x * D + i] = inv * w[i] * g[i] - c * xr[i];
  if (threadIdx.x == 0) inv_out[blockIdx.x] = inv;
}
__global__ void k_rmsnorm_bwd4(const float* x, const float* w, const float* dy, float* dx, float* inv_out, int64_t D, float eps) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * D;
  const float* g = dy + blockIdx.x * D;
  float ss = 0, dot = 0;
  for (int64_t i = 4 * threadIdx.x; i < D; i += 4 * blockDim.x) {
    const float4 a = load4(xr + i), b = load4(w + i), c = load4(g + i);
    ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    dot += a.x * b.x * c.x + a.y * b.y * c.y + a.z * b.z * c.z + a.w * b.w * c.w;
  }
  ss = block_reduce<false>(ss, red);
  dot = block_reduce<false>(dot, red);
  const float inv = rsqrtf(ss / D + eps);
  const float k = dot * inv * inv * inv / D;
  for (int64_t i = 4 * threadIdx.x; i < D; i += 4 * blockDim.x) {
    const float4 a = load4(xr + i), b = load4(w + i), c = load4(g + i);
    store4(dx + blockIdx.x * D + i, make_float4(inv * b.x * c.x - k * a.x, inv * b.y * c.y - k * a.y, inv * b.z * c.z - k * a.z, inv * b.w * c.w - k * a.w));
  }
  if (threadIdx.x == 0) inv_out[blockIdx.x] = inv;
}
// partial[split, c] = Σ over the split's rows of dy[r, c]·x[r, c]·inv[r]; blocks of 32 columns × 8 row
// lanes (coalesced along the columns), the lanes summed in order.
constexpr int kDwLanes = 8;
constexpr int64_t kDwSplits = 64;
__global__ void k_rmsnorm_dw_partial(const float* x, const float* dy, const float* inv, float* partial, int64_t rows, int64_t D) {
  __shared__ float acc[kDwLanes][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t per = (rows + gridDim.y - 1) / gridDim.y;
  const int64_t r0 = blockIdx.y * per, r1 = r0 + per < rows ? r0 + per : rows;
  float s = 0;
  if (c < D)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kDwLanes) s += dy[r * D + c] * x[r * D + c] * inv[r];
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float t = 0;
    for (int i = 0; i < kDwLanes; i++) t += acc[i][threadIdx.x];
    partial[blockIdx.y * D + c] = t;
  }
}
__global__ void k_sum_splits(const float* partial, float* out, int64_t splits, int64_t D) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= D) return;
  float t = 0;
  for (int64_t s = 0; s < splits; s++) t += partial[s * D + c];
  out[c] = t;
}
extern "C" mla_status mla_cuda_rmsnorm(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t rows, int64_t D, float eps) {
  NEED_CTX();
  MLA_CHECK(is_f32(x, rows * D) && is_f32(w, D) && is_f32_or_bf16(y, rows * D), "rmsnorm: f32 buffers [rows, D], [D] (y may be bf16)");
  const bool v4 = D % 4 == 0 && vec4(x) && vec4(w) && vec4(y);
  // Few rows (a decode step: one per sequence): up to 1024 threads per row, one float4 each up to
  // D = 4096, so a row is one round of loads and one reduction; a 256-thread block walked a 4096-wide
  // row in four dependent rounds (~6 µs per call in a recorded llama2-7b step, docs/benchmarks.md,
  // sixteenth session). Many rows (prefill, training) keep 256 threads and the same bits as before.
  const int t4 = rows < 64 ? (int)std::min<int64_t>(1024, std::max<int64_t>(32, (D / 4 + 31) / 32 * 32)) : 256;
  if (rows && y->dtype == MLA_BF16 && v4) k_rmsnorm4<<<(unsigned)rows, t4, 0, S_>>>(CF(x), CF(w), (__nv_bfloat16*)y->ptr, D, eps);
  else if (rows && v4) k_rmsnorm4<<<(unsigned)rows, t4, 0, S_>>>(CF(x), CF(w), F(y), D, eps);
  else if (rows && y->dtype == MLA_BF16) k_rmsnorm<<<(unsigned)rows, 256, 0, S_>>>(CF(x), CF(w), (__nv_bfloat16*)y->ptr, D, eps);
  else if (rows) k_rmsnorm<<<(unsigned)rows, 256, 0, S_>>>(CF(x), CF(w), F(y), D, eps);
  KERNEL_CHECK();
  return MLA_OK;
}
extern "C" mla_status mla_cuda_rmsnorm_backward(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* dy, mla_cuda_buf* dx, mla_cuda_buf* dw, int64_t rows, int64_t D, float eps) {
  NEED_CTX();
  MLA_CHECK(is_f32(x, rows * D) && is_f32(w, D) && is_f32(dy, rows * D) && is_f32(dx, rows * D) && is_f32(dw, D), "rmsnorm_backward: f32 buffers");
  if (rows == 0) {
    CUDA_TRY(cudaMemsetAsync(dw->ptr, 0, sizeof(float) * D, S_));
    return MLA_OK;
  }
  const int64_t splits = rows < kDwSplits ? rows : kDwSplits;
  mla_status st = MLA_OK;
  float* inv = (float*)mla::scratch(sizeof(float) * (rows + splits * D), &st);
  if (st != MLA_OK) return st;
  float* partial = inv + rows;
  if (D % 4 == 0 && vec4(x) && vec4(w) && vec4(dy) && vec4(dx)) k_rmsnorm_bwd4<<<(unsigned)rows, 256, 0, S_>>>(CF(x), CF(w), CF(dy), F(dx), inv, D, eps);
  else k_rmsnorm_bwd<<<(unsigned)rows, 256, 0, S_>>>(CF(x), CF(w), CF(dy), F(dx), inv, D, eps);
  k_rmsnorm_dw_partial<<<dim3((unsigned)((D + 31) / 32), (unsigned)splits), dim3(32, kDwLanes), 0, S_>>>(CF(x), CF(dy), inv, partial, rows, D);
  k_sum_splits<<<blocks_for(D, 256), 256, 0, S_>>>(partial, F(dw), splits, D);
  KERNEL_CHECK();
  return MLA_OK;
}

// ---------------- RoPE ----------------
// One thread per (token, rotary pair, run of up to ROPE_HEADS heads; one head where each head has its
// own frequencies): the angle's sine and cosine are computed once for the heads of the run, and a
// pair's two outputs are written together; 32-bit index math (the launcher passes at most 2^31 − 1
// elements per launch). Per element it once took four double-precision trig calls and four 64-bit
// divisions, which made rope cost as much as a q projection in an eval forward.
constexpr int ROPE_HEADS = 8;
__global__ void k_rope(const float* x, float* y, const int32_t* pos, const double* inv_freq, int T, int H, int Dh, int half, int runs, bool per_head, int sign) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * runs * half) return;
  const int j = i % half, r = i / half, run = r % runs, t = r / runs;
  const int h0 = per_head ? run : run * ROPE_HEADS, h1 = per_head ? run + 1 : min(H, h0 + ROPE_HEADS);
  // The angle is rounded to float32 as HF computes it; sin/cos in double as the reference backend does.
  const float p = (float)(sign * pos[t]);
  double s = 0, c = 1;
  if (!per_head) sincos((double)(p * (float)inv_freq[j]), &s, &c);
  for (int h = h0; h < h1; h++) {
    if (per_head) sincos((double)(p * (float)inv_freq[h * half + j]), &s, &c);
    const int64_t row = ((int64_t)t * H + h) * Dh;
    const float a = x[row + j], b = x[row + j + half];
    y[row + j] = (float)(a * c - b * s);
    y[row + j + half] = (float)(b * c + a * s);
  }
}
// The dims past the rotary ones (partial rotary) pass through: [rows, Dh] columns from `from` on.
__global__ void k_rope_tail(const float* x, float* y, int64_t rows, int Dh, int from) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, w = Dh - from;
  if (i >= rows * w) return;
  const int64_t at = (i / w) * Dh + from + i % w;
  y[at] = x[at];
}
extern "C" mla_status mla_cuda_rope(const mla_cuda_buf* x, mla_cuda_buf* y, const int32_t* positions, const double* inv_freq, int64_t n_freq, int64_t T, int64_t H, int64_t Dh, int64_t rotary_dims, int32_t sign) {
  NEED_CTX();
  MLA_CHECK(is_f32(x, T * H * Dh) && is_f32(y, T * H * Dh) && (positions || T == 0) && (inv_freq || n_freq == 0), "rope: f32 buffers [T,H,Dh]");
  MLA_CHECK(rotary_dims > 0 && rotary_dims % 2 == 0 && rotary_dims <= Dh, "rope: rotary_dims must be even and at most Dh");
  const int64_t half = rotary_dims / 2;
  MLA_CHECK(n_freq == half || n_freq == H * half, "rope: n_freq must be rotary_dims/2 or H·rotary_dims/2");
  DevInts p;
  DevF64s f;
  const int32_t* pos = nullptr;
  const double* freq = nullptr;
  if (mla::capturing()) {  // a decode graph: the step's positions, the frequencies uploaded once
    mla_status st = MLA_OK;
    if (!(pos = mla::step_positions(positions, T))) return MLA_FAIL(MLA_ERR_UNSUPPORTED, "rope: positions other than the captured step's");
    if (!(freq = (const double*)mla::capture_constant(inv_freq, n_freq * sizeof(double), &st))) return st;
  } else {
    TO_DEVICE(p, positions, T);
    TO_DEVICE(f, inv_freq, n_freq);
    pos = p.p;
    freq = f.p;
  }
  if (T * H * Dh == 0) return MLA_OK;
  const bool per_head = n_freq == H * half && H > 1;
  // Heads with frequencies of their own take a thread each: a run would chain their sincos calls.
  const int runs = per_head ? (int)H : (int)((H + ROPE_HEADS - 1) / ROPE_HEADS);
  // Tokens per launch: the kernel's 32-bit indices stay below 2^31 (x's offsets are 64-bit).
  const int64_t perLaunch = std::max<int64_t>(1, (int64_t)INT32_MAX / std::max<int64_t>(H * Dh, runs * half));
  for (int64_t t0 = 0; t0 < T; t0 += perLaunch) {
    const int64_t Tc = std::min(perLaunch, T - t0), off = t0 * H * Dh;
    k_rope<<<blocks_for(Tc * runs * half, 256), 256, 0, S_>>>(CF(x) + off, F(y) + off, pos + t0, freq, (int)Tc, (int)H, (int)Dh, (int)half, runs, per_head, sign < 0 ? -1 : 1);
    KERNEL_CHECK();
  }
  if (2 * half < Dh) {
    k_rope_tail<<<blocks_for(T * H * (Dh - 2 * half), 256), 256, 0, S_>>>(CF(x), F(y), T * H, (int)Dh, (int)(2 * half));
    KERNEL_CHECK();
  }
  return MLA_OK;
}

// ---------------- embedding ----------------
// The table is float, or bf16 where training reads it from its bf16 copy (EG-MLA's gate embedding).
template <typename E>
__global__ void k_embedding(const E* table, const int32_t* ids, float* y, int64_t T, int64_t D) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < T * D) y[i] = (float)table[(int64_t)ids[i / D] * D + i % D];
}
// One block row per distinct token id: its positions (sorted on the host) summed in order, no atomics.
__global__ void k_embedding_bwd(const int32_t* order, const int32_t* seg_start, const int32_t* seg_id, const float* dy, float* dt, int64_t D) {
  const int64_t d = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  if (d >= D) return;
  float s = 0;
  for (int32_t j = seg_start[blockIdx.x]; j < seg_start[blockIdx.x + 1]; j++) s += dy[(int64_t)order[j] * D + d];
  dt[(int64_t)seg_id[blockIdx.x] * D + d] = s;
}
static mla_status check_ids(const char* op, const int32_t* ids, int64_t T, int64_t V) {
  for (int64_t t = 0; t < T; t++)
    if (ids[t] < 0 || ids[t] >= V) return MLA_FAIL(MLA_ERR_ARGUMENT, std::string(op) + ": token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(V));
  return MLA_OK;
}
extern "C" mla_status mla_cuda_embedding(const mla_cuda_buf* table, const int32_t* ids, mla_cuda_buf* y, int64_t T, int64_t V, int64_t D) {
  NEED_CTX();
  MLA_CHECK(is_f32_or_bf16(table, V * D) && is_f32(y, T * D) && (ids || T == 0), "embedding: table [V,D] f32 or bf16, y [T,D] f32");
  if (mla_status st = check_ids("embedding", ids, T, V)) return st;
  DevInts d;
  const int32_t* dev = nullptr;
  if (mla::capturing()) {  // a decode graph: the step's ids (a replay's are checked by its caller)
    if (!(dev = mla::step_ids(ids, T))) return MLA_FAIL(MLA_ERR_UNSUPPORTED, "embedding: token ids other than the captured step's");
  } else {
    TO_DEVICE(d, ids, T);
    dev = d.p;
  }
  if (T * D && table->dtype == MLA_BF16) k_embedding<<<blocks_for(T * D, 256), 256, 0, S_>>>((const __nv_bfloat16*)table->ptr, dev, F(y), T, D);
  else if (T * D) k_embedding<<<blocks_for(T * D, 256), 256, 0, S_>>>(CF(table), dev, F(y), T, D);
  KERNEL_CHECK();
  return MLA_OK;
}
extern "C" mla_status mla_cuda_embedding_backward(const int32_t* ids, const mla_cuda_buf* dy, mla_cuda_buf* dtable, int64_t T, int64_t V, int64_t D) {
  NEED_CTX();
  MLA_CHECK(is_f32(dy, T * D) && is_f32(dtable, V * D) && (ids || T == 0), "embedding_backward: f32 buffers");
  if (mla_status st = check_ids("embedding_backward", ids, T, V)) return st;
  // Positions grouped by token id (stable), so each id's rows are summed in position order.
  std::vector<int32_t> order(T), starts, segIds;
  for (int64_t t = 0; t < T; t++) order[t] = (int32_t)t;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  for (int64_t j = 0; j < T; j++)
    if (j == 0 || ids[order[j]] != ids[order[j - 1]]) {
      starts.push_back((int32_t)j);
      segIds.push_back(ids[order[j]]);
    }
  starts.push_back((int32_t)T);
  DevInts dOrder, dStarts, dSegs;
  TO_DEVICE(dOrder, order.data(), T);
  TO_DEVICE(dStarts, starts.data(), (int64_t)starts.size());
  TO_DEVICE(dSegs, segIds.data(), (int64_t)segIds.size());
  CUDA_TRY(cudaMemsetAsync(dtable->ptr, 0, sizeof(float) * V * D, S_));
  if (!segIds.empty() && D > 0) k_embedding_bwd<<<dim3((unsigned)segIds.size(), (unsigned)((D + 255) / 256)), 256, 0, S_>>>(dOrder.p, dStarts.p, dSegs.p, CF(dy), F(dtable), D);
  KERNEL_CHECK();
  return MLA_OK;
}

// ---------------- cross-entropy ----------------
// (max, Σ exp(x − max)) of two parts of a row, combined.
__device__ __forceinline__ void combine_max_sum(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  s = s * expf(m - M) + s2 * expf(m2 - M);
  m = M;
}
// One block per row. The row's maximum and Σ exp(x − max) come from one read (each thread keeps a running
// pair, rescaled when its maximum moves; pairs are combined across the block), the gradient from a second
// (mostly from L2). loss[row] = log Σ exp − x[target]; grad[row] = scale·(softmax − onehot), stored as G
// (bf16 when a bf16 product reads it next: the same rounding that product would apply).
template <typename LossT, typename G>
__global__ void k_cross_entropy(const float* logits, const int32_t* targets, LossT* loss, G* grad, float scale, int64_t V) {
  __shared__ float red_m[32], red_s[32];
  const float* row = logits + blockIdx.x * V;
  float m = -FLT_MAX, s = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = row[i];
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) combine_max_sum(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    red_m[warp] = m;
    red_s[warp] = s;
  }
  __syncthreads();
  m = red_m[0];
  s = red_s[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) combine_max_sum(m, s, red_m[w], red_s[w]);
  const int32_t y = targets[blockIdx.x];
  if (loss && threadIdx.x == 0) loss[blockIdx.x] = (LossT)(log((double)s) + m - row[y]);
  if (grad) {
    const float inv = 1.0f / s;
    G* g = grad + blockIdx.x * V;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) g[i] = (G)(scale * (expf(row[i] - m) * inv - (i == y ? 1.0f : 0.0f)));
  }
}
static mla_status check_targets(const int32_t* targets, int64_t T, int64_t V) {
  for (int64_t t = 0; t < T; t++) MLA_CHECK(targets[t] >= 0 && targets[t] < V, "cross_entropy: target " + std::to_string(targets[t]) + " is outside the vocabulary of " + std::to_string(V));
  return MLA_OK;
}
// loss[T] on the host (double, skipped when NULL); grad[T,V] = scale·(softmax − onehot) on the device (skipped when NULL).
extern "C" mla_status mla_cuda_cross_entropy(const mla_cuda_buf* logits, const int32_t* targets, double* loss, mla_cuda_buf* grad, float scale, int64_t T, int64_t V) {
  NEED_CTX();
  MLA_CHECK(is_f32(logits, T * V) && (targets || T == 0) && (!grad || is_f32(grad, T * V)), "cross_entropy: f32 buffers [T,V]");
  if (mla_status e = check_targets(targets, T, V)) return e;
  DevInts d;
  TO_DEVICE(d, targets, T);
  DevF64s l;
  if (loss) CUDA_TRY(cudaMallocAsync(&l.p, sizeof(double) * (T > 0 ? T : 1), S_));
  if (T) k_cross_entropy<double, float><<<(unsigned)T, 256, 0, S_>>>(CF(logits), d.p, l.p, grad ? F(grad) : nullptr, scale, V);
  KERNEL_CHECK();
  if (loss && T) CUDA_TRY(cudaMemcpyAsync(loss, l.p, sizeof(double) * T, cudaMemcpyDeviceToHost, S_));
  CUDA_TRY(cudaStreamSynchronize(S_));
  return MLA_OK;
}
// The training step's form: the per-row losses stay on the device (f32, at loss[loss_offset …]) so the
// step never waits for them, and grad may be bf16. No synchronization.
extern "C" mla_status mla_cuda_cross_entropy_device(const mla_cuda_buf* logits, const int32_t* targets, mla_cuda_buf* loss, int64_t loss_offset, mla_cuda_buf* grad, float scale, int64_t T, int64_t V) {
  NEED_CTX();
  MLA_CHECK(is_f32(logits, T * V) && (targets || T == 0) && is_f32_or_bf16(grad, T * V), "cross_entropy_device: logits f32 [T,V], grad f32 or bf16 [T,V]");
  MLA_CHECK(loss && loss->dtype == MLA_F32 && loss_offset >= 0 && loss_offset + T <= loss->n, "cross_entropy_device: loss must be an f32 buffer with room for T rows from loss_offset");
  if (mla_status e = check_targets(targets, T, V)) return e;
  DevInts d;
  TO_DEVICE(d, targets, T);
  float* l = F(loss) + loss_offset;
  if (T && grad->dtype == MLA_BF16) k_cross_entropy<float, __nv_bfloat16><<<(unsigned)T, 256, 0, S_>>>(CF(logits), d.p, l, (__nv_bfloat16*)grad->ptr, scale, V);
  else if (T) k_cross_entropy<float, float><<<(unsigned)T, 256, 0, S_>>>(CF(logits), d.p, l, F(grad), scale, V);
  KERNEL_CHECK();
  return MLA_OK;
}

// Distillation, per row of student/teacher logits [V]: p = softmax(x/τ); loss = τ²·Σ p_t·(log p_t − log p_s)
// (double); grad = scale·τ·(p_s − p_t).
__global__ void k_kl_divergence(const float* st, const float* te, double* loss, float* grad, float tau, float scale, int64_t V) {
  __shared__ float red[32];
  __shared__ double redd[32];
  const float* s = st + (int64_t)blockIdx.x * V;
  const float* t = te + (int64_t)blockIdx.x * V;
  const float inv = 1.0f / tau;
  float ms = -FLT_MAX, mt = -FLT_MAX;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    ms = fmaxf(ms, s[i] * inv);
    mt = fmaxf(mt, t[i] * inv);
  }
  ms = block_reduce<true>(ms, red);
  mt = block_reduce<true>(mt, red);
  float zs = 0, zt = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    zs += expf(s[i] * inv - ms);
    zt += expf(t[i] * inv - mt);
  }
  zs = block_reduce<false>(zs, red);
  zt = block_reduce<false>(zt, red);
  const double lzs = log((double)zs), lzt = log((double)zt);
  double kl = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const double ls = (double)(s[i] * inv - ms) - lzs, lt = (double)(t[i] * inv - mt) - lzt;
    const double pt = exp(lt);
    kl += pt * (lt - ls);
    grad[(int64_t)blockIdx.x * V + i] = scale * tau * (float)(exp(ls) - pt);
  }
  // block sum in double
  for (int o = 16; o > 0; o >>= 1) kl += __shfl_xor_sync(0xffffffffu, kl, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) redd[warp] = kl;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) sum += redd[w];
    loss[blockIdx.x] = (double)tau * tau * sum;
  }
}

extern "C" mla_status mla_cuda_kl_divergence(const mla_cuda_buf* student, const mla_cuda_buf* teacher, double* loss, mla_cuda_buf* grad, float temperature, float scale, int64_t T, int64_t V) {
  NEED_CTX();
  MLA_CHECK(is_f32(student, T * V) && is_f32(teacher, T * V) && is_f32(grad, T * V) && loss && temperature > 0, "kl_divergence: f32 buffers student, teacher, grad [T,V] and temperature > 0");
  DevF64s l;
  CUDA_TRY(cudaMallocAsync(&l.p, sizeof(double) * (T > 0 ? T : 1), S_));
  if (T) k_kl_divergence<<<(unsigned)T, 256, 0, S_>>>(CF(student), CF(teacher), l.p, F(grad), temperature, scale, V);
  KERNEL_CHECK();
  if (T) CUDA_TRY(cudaMemcpyAsync(loss, l.p, sizeof(double) * T, cudaMemcpyDeviceToHost, S_));
  CUDA_TRY(cudaStreamSynchronize(S_));
  return MLA_OK;
}

// ---------------- attention ----------------
// One block per (query row t, head h). Dynamic shared memory: the query row(s) and the scores of
// the visible keys. Latent attention adds a second dot product against the shared latent c[S, L]
// and reads its values from c; plain attention reads k and v of KV head h / (H / Hkv).
template <bool Latent>
__global__ void k_attention(const float* q, const float* k, const float* v, const float* qc, const float* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, int64_t L, float scale, int64_t off, int64_t window) {
  extern __shared__ float sm[];
  __shared__ float red[32];
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H, kh = h / (H / Hkv);
  const int64_t qpos = t + off;
  const int64_t lo = window > 0 ? max((int64_t)0, qpos - window + 1) : 0, hi = min(S - 1, qpos);
  const int64_t n = hi - lo + 1;
  const int64_t Dout = Latent ? L : Dv;
  float* out = o + (t * H + h) * Dout;
  if (n <= 0) {
    for (int64_t d = threadIdx.x; d < Dout; d += blockDim.x) out[d] = 0;
    return;
  }
  float* qs = sm;                      // [Dh] (+ [L] for latent)
  float* p = sm + Dh + (Latent ? L : 0);  // [n]
  for (int64_t d = threadIdx.x; d < Dh; d += blockDim.x) qs[d] = q[(t * H + h) * Dh + d];
  if (Latent)
    for (int64_t d = threadIdx.x; d < L; d += blockDim.x) qs[Dh + d] = qc[(t * H + h) * L + d];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t j = warp; j < n; j += nw) {
    const int64_t s = lo + j;
    const float* kr = k + (s * Hkv + kh) * Dh;
    float dot = 0;
    for (int64_t d = lane; d < Dh; d += 32) dot += qs[d] * kr[d];
    if (Latent) {
      const float* cr = c + s * L;
      for (int64_t d = lane; d < L; d += 32) dot += qs[Dh + d] * cr[d];
    }
    dot = warp_sum(dot);
    if (lane == 0) p[j] = dot * scale;
  }
  __syncthreads();
  float mx = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, p[j]);
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float e = expf(p[j] - mx);
    p[j] = e;
    z += e;
  }
  z = block_reduce<false>(z, red);  // its barriers also publish p
  for (int64_t d = threadIdx.x; d < Dout; d += blockDim.x) {
    float acc = 0;
    if (Latent)
      for (int64_t j = 0; j < n; j++) acc += p[j] * c[(lo + j) * L + d];
    else
      for (int64_t j = 0; j < n; j++) acc += p[j] * v[((lo + j) * Hkv + kh) * Dv + d];
    out[d] = acc / z;
  }
}

// Flash-style causal GQA attention for T > 1 (online softmax, FlashAttention's recurrence): one
// block per (tile of FQ query rows, head). Each tile of FK keys and values is staged in shared memory
// once and used by all FQ queries (the block-per-row kernel above re-reads K and V from global memory
// for every query row), and no row of scores is stored, so the context is not limited by shared
// memory. Each warp owns FQ/FWARPS queries; per key tile a lane scores one key, then the lanes own
// output dims lane, lane+32, … (Dv ≤ 32·MAXV) and accumulate p·V with p broadcast by shuffles.
// Float32 on CUDA cores; tensor-core tiles would be the next step.
constexpr int FQ = 32, FK = 32, FWARPS = 4, QPW = FQ / FWARPS;

__host__ __device__ constexpr size_t flash_smem_floats(int Dh, int Dv) { return (size_t)FQ * Dh + (size_t)FK * (Dh + 1) + (size_t)FK * Dv; }

template <int MAXV>
__global__ void __launch_bounds__(FWARPS * 32) k_flash_attention(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, float* __restrict__ o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int Dh, int Dv, float scale, int64_t off, int64_t window) {
  extern __shared__ float sm[];
  const int64_t h = blockIdx.y, kh = h / (H / Hkv);
  const int64_t t0 = (int64_t)blockIdx.x * FQ;
  const int nq = (int)min((int64_t)FQ, T - t0);
  const int ldk = Dh + 1;  // padded key rows: lane j reading row j, column d hits distinct banks
  float* qs = sm;           // [FQ][Dh], pre-scaled; rows ≥ nq are zero
  float* ks = qs + FQ * Dh; // [FK][Dh+1]
  float* vs = ks + FK * ldk;// [FK][Dv]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < FQ * Dh; i += blockDim.x) {
    const int r = i / Dh, d = i % Dh;
    qs[i] = r < nq ? q[((t0 + r) * H + h) * Dh + d] * scale : 0.f;
  }
  const int64_t first = t0 + off, last = t0 + nq - 1 + off;
  const int64_t lo = window > 0 ? max((int64_t)0, first - window + 1) : 0, hi = min(S - 1, last);
  // The warp's QPW queries are processed together: each key element read from shared memory serves
  // QPW scores, and each value element QPW accumulators (loads, not FMAs, bound this kernel).
  const float* qw = qs + warp * QPW * Dh;
  float m[QPW], l[QPW], acc[QPW][MAXV];
#pragma unroll
  for (int i = 0; i < QPW; i++) {
    m[i] = -INFINITY;
    l[i] = 0;
#pragma unroll
    for (int e = 0; e < MAXV; e++) acc[i][e] = 0;
  }
  for (int64_t s0 = lo; s0 <= hi; s0 += FK) {
    __syncthreads();  // the previous tile is consumed (and, the first time, qs is written)
    const int nk = (int)min((int64_t)FK, hi - s0 + 1);
    for (int i = threadIdx.x; i < FK * Dh; i += blockDim.x) {
      const int r = i / Dh, d = i % Dh;
      ks[r * ldk + d] = r < nk ? k[((s0 + r) * Hkv + kh) * Dh + d] : 0.f;
    }
    for (int i = threadIdx.x; i < FK * Dv; i += blockDim.x) {
      const int r = i / Dv, d = i % Dv;
      vs[i] = r < nk ? v[((s0 + r) * Hkv + kh) * Dv + d] : 0.f;
    }
    __syncthreads();
    // Scores: lane j takes key s0 + j against each of the warp's queries.
    float sc[QPW];
#pragma unroll
    for (int qi = 0; qi < QPW; qi++) sc[qi] = 0;
    const float* kr = ks + lane * ldk;
    for (int d = 0; d < Dh; d++) {
      const float kd = kr[d];
#pragma unroll
      for (int qi = 0; qi < QPW; qi++) sc[qi] += qw[qi * Dh + d] * kd;
    }
    float p[QPW];
#pragma unroll
    for (int qi = 0; qi < QPW; qi++) {
      const int r = warp * QPW + qi;
      const int64_t qpos = t0 + r + off, s = s0 + lane;
      const int64_t qlo = window > 0 ? max((int64_t)0, qpos - window + 1) : 0, qhi = min(S - 1, qpos);
      if (!(r < nq && lane < nk && s >= qlo && s <= qhi)) sc[qi] = -INFINITY;
      const float tmax = warp_max(sc[qi]);
      p[qi] = 0;
      if (tmax != -INFINITY) {  // warp-uniform: otherwise the whole tile is masked for this query
        const float mnew = fmaxf(m[qi], tmax);
        const float corr = expf(m[qi] - mnew);  // 0 on the first visible tile (m = −∞)
        p[qi] = expf(sc[qi] - mnew);            // 0 for masked keys
        l[qi] = l[qi] * corr + warp_sum(p[qi]);
#pragma unroll
        for (int e = 0; e < MAXV; e++) acc[qi][e] *= corr;
        m[qi] = mnew;
      }
    }
    // acc[qi][e] += Σ_j p_j · V[j, lane + 32e], p_j broadcast from lane j.
    for (int j = 0; j < nk; j++) {
      float vj[MAXV];
#pragma unroll
      for (int e = 0; e < MAXV; e++) {
        const int d = lane + 32 * e;
        vj[e] = d < Dv ? vs[j * Dv + d] : 0.f;
      }
#pragma unroll
      for (int qi = 0; qi < QPW; qi++) {
        const float pj = __shfl_sync(0xffffffffu, p[qi], j);
#pragma unroll
        for (int e = 0; e < MAXV; e++) acc[qi][e] += pj * vj[e];
      }
    }
  }
#pragma unroll
  for (int qi = 0; qi < QPW; qi++) {
    const int r = warp * QPW + qi;
    if (r >= nq) continue;
    const float inv = l[qi] > 0 ? 1.f / l[qi] : 0.f;  // a query with no visible key outputs zeros, as the row kernel does
    float* out = o + ((t0 + r) * H + h) * Dv;
#pragma unroll
    for (int e = 0; e < MAXV; e++) {
      const int d = lane + 32 * e;
      if (d < Dv) out[d] = acc[qi][e] * inv;
    }
  }
}

static mla_status launch_flash_attention(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  static bool configured = false;
  const size_t smem = sizeof(float) * flash_smem_floats(256, 256);
  if (!configured) {
    CUDA_TRY(cudaFuncSetAttribute(k_flash_attention<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CUDA_TRY(cudaFuncSetAttribute(k_flash_attention<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  const dim3 grid((unsigned)((T + FQ - 1) / FQ), (unsigned)H);
  const size_t need = sizeof(float) * flash_smem_floats((int)Dh, (int)Dv);
  if (Dv <= 128) k_flash_attention<4><<<grid, FWARPS * 32, need, S_>>>(q, k, v, o, T, S, H, Hkv, (int)Dh, (int)Dv, scale, off, window);
  else k_flash_attention<8><<<grid, FWARPS * 32, need, S_>>>(q, k, v, o, T, S, H, Hkv, (int)Dh, (int)Dv, scale, off, window);
  KERNEL_CHECK();
  return MLA_OK;
}

template <bool Latent>
static mla_status launch_attention(const float* q, const float* k, const float* v, const float* qc, const float* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, int64_t L, float scale, int64_t off, int64_t window) {
  static int max_smem = -1;
  if (max_smem < 0) {
    CUDA_TRY(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx()->device));
    CUDA_TRY(cudaFuncSetAttribute(k_attention<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem - 1024));
    CUDA_TRY(cudaFuncSetAttribute(k_attention<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem - 1024));
  }
  const int64_t visible = min(S, window > 0 ? window : S);
  const size_t smem = sizeof(float) * (Dh + (Latent ? L : 0) + visible);
  if (smem > (size_t)(max_smem - 1024))
    return MLA_FAIL(MLA_ERR_ARGUMENT, "attention: " + std::to_string(visible) + " visible keys need " + std::to_string(smem) + " bytes of shared memory, more than the " + std::to_string(max_smem - 1024) + " this kernel can use; evaluate with a shorter context or use --device cpu");
  if (T * H) {
    if (Latent) k_attention<true><<<(unsigned)(T * H), 128, smem, S_>>>(q, k, v, qc, c, o, T, S, H, Hkv, Dh, Dv, L, scale, off, window);
    else k_attention<false><<<(unsigned)(T * H), 128, smem, S_>>>(q, k, v, qc, c, o, T, S, H, Hkv, Dh, Dv, L, scale, off, window);
  }
  KERNEL_CHECK();
  return MLA_OK;
}

// q16, k16, v16: bf16 copies of q, k, v the caller keeps (read instead of rounding q, k, v); o16: filled
// with o rounded to bf16 (for the caller to keep beside o); each null or bf16 of its tensor's size.
extern "C" mla_status mla_cuda_attention(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, mla_cuda_buf* o, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, int32_t bf16, mla_cuda_buf* lse, int32_t* saved, const mla_cuda_buf* q16, const mla_cuda_buf* k16, const mla_cuda_buf* v16, mla_cuda_buf* o16) {
  NEED_CTX();
  MLA_CHECK(B >= 1 && is_f32(q, B * T * H * Dh) && is_f32(k, B * S * Hkv * Dh) && is_f32(v, B * S * Hkv * Dv) && is_f32(o, B * T * H * Dv), "attention: f32 buffers q[B·T,H,Dh], k[B·S,Hkv,Dh], v[B·S,Hkv,Dv], o[B·T,H,Dv]");
  MLA_CHECK(Hkv > 0 && H % Hkv == 0, "attention: H must be a multiple of Hkv");
  // Its sizes (T, S, the chunking, cuDNN's graph) are fixed on the host per call: not a decode-step op.
  if (mla::capturing()) return mla::refuse("attention over T > 1 query rows is a prefill op, which a decode graph does not record");
  mla::AttentionBf16 kept;
  if (mla_status e = mla::kept_bf16(kept, q16, k16, v16, o16, B * T * H * Dh, B * S * Hkv * Dh, B * S * Hkv * Dv, B * T * H * Dv, "attention")) return e;
  const mla::AttentionRoute route = mla::attention_route();
  if (saved) *saved = 0;
  if (T > 1 && S > 0 && (route == mla::AttentionRoute::Auto || route == mla::AttentionRoute::Fused || route == mla::AttentionRoute::Cudnn || route == mla::AttentionRoute::Gemm)) {
    // Statistics for the backward come only from the fused kernels (saved = 1) or cuDNN (saved = 2:
    // natural-log statistics, which only cuDNN's backward reads).
    // The route is decided here, once: cuDNN builds (and caches) only the graph the call runs, with
    // statistics when the caller keeps them for the backward, without for inference.
    MLA_CHECK(!lse || is_f32(lse, B * H * T), "attention: lse must be an f32 buffer [B·H·T]");
    const bool cudnn = mla::use_cudnn(bf16 != 0, B, T, S, H, Hkv, Dh, Dv, scale, off, window, lse != nullptr);
    const bool fused = cudnn || mla::use_mma(bf16 != 0, Dh, Dv);
    if (mla_status e = mla::attention_gemm(CF(q), CF(k), CF(v), F(o), fused && lse ? F(lse) : nullptr, B, T, S, H, Hkv, Dh, Dv, scale, off, window, bf16 != 0, cudnn, kept)) return e;
    if (lse && fused && saved) *saved = cudnn ? 2 : 1;
    return MLA_OK;
  }
  // The other routes take one sequence at a time, in float32.
  for (int64_t b = 0; b < B; b++) {
    const float* qb = CF(q) + b * T * H * Dh;
    const float* kb = CF(k) + b * S * Hkv * Dh;
    const float* vb = CF(v) + b * S * Hkv * Dv;
    float* ob = F(o) + b * T * H * Dv;
    // The flash kernel takes head dims up to 256 (every Llama-family model); wider ones the row kernel.
    mla_status st = T > 1 && Dh <= 256 && Dv <= 256 && route == mla::AttentionRoute::Flash ? launch_flash_attention(qb, kb, vb, ob, T, S, H, Hkv, Dh, Dv, scale, off, window)
                                                                                     : launch_attention<false>(qb, kb, vb, nullptr, nullptr, ob, T, S, H, Hkv, Dh, Dv, 0, scale, off, window);
    if (st != MLA_OK) return st;
  }
  return kept.o ? mla::narrow_f32(CF(o), kept.o, B * T * H * Dv) : MLA_OK;
}

extern "C" mla_status mla_cuda_latent_attention(const mla_cuda_buf* qr, const mla_cuda_buf* kr, const mla_cuda_buf* qc, const mla_cuda_buf* c, mla_cuda_buf* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t off, int64_t window) {
  NEED_CTX();
  MLA_CHECK(is_f32(qr, T * H * Dr) && is_f32(kr, S * Hkv * Dr) && is_f32(qc, T * H * L) && is_f32(c, S * L) && is_f32(o, T * H * L), "latent_attention: f32 buffers qr[T,H,Dr], kr[S,Hkv,Dr], qc[T,H,L], c[S,L], o[T,H,L]");
  MLA_CHECK(Hkv > 0 && H % Hkv == 0, "latent_attention: H must be a multiple of Hkv");
  return launch_attention<true>(CF(qr), CF(kr), nullptr, CF(qc), CF(c), F(o), T, S, H, Hkv, Dr, 0, L, scale, off, window);
}

// ---------------- calibration ----------------
// acc[h·half + i] += mean over t of ‖(y[t,h,i], y[t,h,i+half])‖; one thread per (h, i), float64 sums.
__global__ void k_pair_norms(const float* y, double* out, int64_t T, int64_t heads, int64_t Dh) {
  const int64_t half = Dh / 2, hi = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (hi >= heads * half) return;
  const int64_t h = hi / half, i = hi % half;
  double s = 0;
  for (int64_t t = 0; t < T; t++) {
    const float* r = y + (t * heads + h) * Dh;
    s += hypot((double)r[i], (double)r[i + half]);
  }
  out[hi] = s / T;
}
extern "C" mla_status mla_cuda_pair_norms(const mla_cuda_buf* y, double* acc, int64_t T, int64_t heads, int64_t Dh) {
  NEED_CTX();
  MLA_CHECK(is_f32(y, T * heads * Dh) && acc && T > 0 && Dh % 2 == 0, "pair_norms: f32 buffer [T, heads, Dh]");
  const int64_t n = heads * (Dh / 2);
  DevF64s o;
  CUDA_TRY(cudaMallocAsync(&o.p, sizeof(double) * n, S_));
  k_pair_norms<<<blocks_for(n, 128), 128, 0, S_>>>(CF(y), o.p, T, heads, Dh);
  KERNEL_CHECK();
  std::vector<double> h(n);
  CUDA_TRY(cudaMemcpyAsync(h.data(), o.p, sizeof(double) * n, cudaMemcpyDeviceToHost, S_));
  CUDA_TRY(cudaStreamSynchronize(S_));
  for (int64_t i = 0; i < n; i++) acc[i] += h[i];
  return MLA_OK;
}
