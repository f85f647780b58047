// Decode's matrix products: y = x·wᵀ for a few activation rows against bf16 weights, in one pass over
// the weights. At one to a few rows cuBLAS picks split-K GEMMs (a second kernel sums the splits) or
// narrow tiles that read the weights at 35–70% of the HBM bandwidth (ncu on a llama2-7b decode step),
// and linear first rounds x into scratch with a kernel of its own: three launches where this is one.
// The numbers are those of the cuBLAS route: x rounded to bf16, products summed in float32 (in
// another order, so not the same bits). Opt-in (MHA2MLA_GEMV_ROWS, below): not yet faster.
//
// Problems p = 0 … P−1 (head_linear's KV groups; linear has one) share the shapes: rows r of problem p
// are (t, j) = (r / hpg, r % hpg), the input row x[t, p·hpg + j, :] and output row y[t, p·hpg + j, :]
// of x [T, H, K] and y [T, H, N] with H = P·hpg; w [P, N, K]. Each warp owns NW output columns and
// walks K in 8-element (16-byte) steps, its lanes 256 elements apart; the rows' x values are loaded
// once per step and used for all NW columns.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include "common.cuh"

using mla::ctx;

namespace {
constexpr int NW = 4;          // output columns per warp
constexpr int WARPS = 4;       // warps per block
constexpr int MAX_ROWS = 8;    // rows per problem this kernel takes

__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int e = 0; e < 8; e++) v[e] = __bfloat162float(__float2bfloat16(f[e]));  // rounded as linear's narrow rounds
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int e = 0; e < 4; e++) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[e]));
    v[2 * e] = f.x;
    v[2 * e + 1] = f.y;
  }
}

// Grid: x = column blocks of WARPS·NW columns, y = problem. R: rows per problem rounded up (rows ≤ R).
template <int R, typename XT>
__global__ void __launch_bounds__(WARPS * 32) k_gemv_bf16(const XT* x, const __nv_bfloat16* w, float* y, int rows, int hpg, int H, int K, int N) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, p = blockIdx.y;
  const int n0 = (blockIdx.x * WARPS + warp) * NW;
  if (n0 >= N) return;
  const __nv_bfloat16* wp = w + (int64_t)p * N * K;
  const XT* xr[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int rr = r < rows ? r : 0;  // rows past the last repeat row 0; their sums are not written
    xr[r] = x + ((int64_t)(rr / hpg) * H + p * hpg + rr % hpg) * K;
  }
  float acc[NW][R];
#pragma unroll
  for (int j = 0; j < NW; j++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[j][r] = 0.f;
  // Two steps per trip (R ≤ 4): the next step's weight loads are in flight while this one's sums run.
#pragma unroll(R <= 4 ? 2 : 1)
  for (int k = lane * 8; k < K; k += 256) {
    float wv[NW][8];
#pragma unroll
    for (int j = 0; j < NW; j++) {
      if (n0 + j < N) load8(wp + (int64_t)(n0 + j) * K + k, wv[j]);
      else
#pragma unroll
        for (int e = 0; e < 8; e++) wv[j][e] = 0.f;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      float xv[8];
      load8(xr[r] + k, xv);
#pragma unroll
      for (int j = 0; j < NW; j++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[j][r] = fmaf(wv[j][e], xv[e], acc[j][r]);
    }
  }
#pragma unroll
  for (int j = 0; j < NW; j++)
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int off = 16; off; off >>= 1) acc[j][r] += __shfl_xor_sync(0xffffffffu, acc[j][r], off);
  // Lane j·R + r writes column n0 + j of row r (NW·R ≤ 32).
#pragma unroll
  for (int j = 0; j < NW; j++)
#pragma unroll
    for (int r = 0; r < R; r++)
      if (lane == j * R + r && r < rows && n0 + j < N) y[((int64_t)(r / hpg) * H + p * hpg + r % hpg) * N + n0 + j] = acc[j][r];
}

template <typename XT>
mla_status launch(const XT* x, const __nv_bfloat16* w, float* y, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  const dim3 grid((unsigned)((N + WARPS * NW - 1) / (WARPS * NW)), (unsigned)P), block(WARPS * 32);
  const int H = (int)(P * hpg);
  cudaStream_t s = ctx()->stream;
  if (rows == 1) k_gemv_bf16<1, XT><<<grid, block, 0, s>>>(x, w, y, (int)rows, (int)hpg, H, (int)K, (int)N);
  else if (rows == 2) k_gemv_bf16<2, XT><<<grid, block, 0, s>>>(x, w, y, (int)rows, (int)hpg, H, (int)K, (int)N);
  else if (rows <= 4) k_gemv_bf16<4, XT><<<grid, block, 0, s>>>(x, w, y, (int)rows, (int)hpg, H, (int)K, (int)N);
  else k_gemv_bf16<8, XT><<<grid, block, 0, s>>>(x, w, y, (int)rows, (int)hpg, H, (int)K, (int)N);
  KERNEL_CHECK();
  return MLA_OK;
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Rows per problem up to which this kernel runs instead of cuBLAS: MHA2MLA_GEMV_ROWS (0–8), read at
// each call; default 0 (never). Measured on the H200 (docs/benchmarks.md, sixteenth session) it is
// slower than cuBLAS in a decode step: 1.9–3.4 TB/s at one row where cuBLAS's split-K kernels plus
// their reduction come out ahead, 1.4 TB/s at eight rows against cuBLAS's 3.4. Kept, tested, as the
// start of a one-kernel decode product (it needs more loads in flight per thread, K split across warps).
int64_t max_rows() {
  const char* v = getenv("MHA2MLA_GEMV_ROWS");
  return v && *v ? std::max<int64_t>(0, std::min<int64_t>(MAX_ROWS, atoll(v))) : 0;
}
}  // namespace

namespace mla {
// Whether gemv_bf16 takes a problem: rows ≤ the limit, K a multiple of 8 (16-byte steps), 16-byte
// aligned rows, sizes within 32-bit indices.
bool gemv_takes(const void* x, bool x_bf16, const void* w, int64_t rows, int64_t K, int64_t N, int64_t P) {
  return rows >= 1 && rows <= max_rows() && K > 0 && K % 8 == 0 && N > 0 && P > 0 && P <= 65535 && N * K < INT32_MAX && aligned16(x) && aligned16(w) && (x_bf16 || K % 4 == 0);
}

// y [T, P·hpg, N] = x [T, P·hpg, K] · w[p]ᵀ per problem p (rows = T·hpg ≤ 8; see gemv_takes). x f32 or bf16.
mla_status gemv_bf16(const void* x, bool x_bf16, const __nv_bfloat16* w, float* y, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  return x_bf16 ? launch((const __nv_bfloat16*)x, w, y, P, rows, hpg, K, N) : launch((const float*)x, w, y, P, rows, hpg, K, N);
}
}  // namespace mla
