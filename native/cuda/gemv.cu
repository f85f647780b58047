// Decode's matrix products: y = x·wᵀ for a few activation rows against bf16 weights, in one pass over
// the weights. At one to a few rows cuBLAS picks split-K GEMMs (a second kernel sums the splits) or
// narrow tiles that read the weights at 35–70% of the HBM bandwidth (ncu on a llama2-7b decode step),
// and linear first rounds x into scratch with a kernel of its own: three launches where this is one.
// The numbers are those of the cuBLAS route: x rounded to bf16, products summed in float32 (in
// another order, so not the same bits). On by default up to 4 rows (MHA2MLA_GEMV_ROWS, below).
//
// Problems p = 0 … P−1 (head_linear's KV groups; linear has one) share the shapes: rows r of problem p
// are (t, j) = (r / hpg, r % hpg), the input row x[t, p·hpg + j, :] and output row y[t, p·hpg + j, :]
// of x [T, H, K] and y [T, H, N] with H = P·hpg; w [P, N, K].
//
// A block owns CB output columns of one problem and splits K, in 8-element (16-byte) chunks, over its
// warps and lanes: chunk c goes to lane c mod (warps·32), so a warp reads 512 contiguous bytes of each
// row per step. Each lane issues all its weight loads of UNROLL steps before it uses any, so a block
// has CB·UNROLL 16-byte loads per thread in flight and most matrices are read in one or two memory
// round trips (the first version walked K in one warp per column, a round trip per step: 1.9 TB/s on
// 4096 × 4096). The rows' x values are loaded once per chunk for all CB columns. Sums: shuffles within
// a warp, then the warps' partial sums in order through shared memory (deterministic).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include "bf16_rows.cuh"
#include "common.cuh"

using mla::ctx;

namespace {
constexpr int CB = 4;         // output columns per block
constexpr int MAX_WARPS = 8;  // warps per block (fewer for short rows: each lane gets ≥ 2 chunks)
constexpr int MAX_ROWS = 4;   // rows per problem this kernel takes

// 16 bytes of weights, read-only, not kept in L1 (the rows' x values are what L1 should hold).
__device__ __forceinline__ uint4 load_w(const __nv_bfloat16* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int e = 0; e < 8; e++) v[e] = __bfloat162float(__float2bfloat16(f[e]));  // rounded as linear's narrow rounds
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* v) { mla_bf16::load_row<8>(p, v); }

// acc += Σ_e w_e · x_e over one chunk (w: 8 bf16 in a uint4).
__device__ __forceinline__ float dot8(uint4 w, const float* x, float acc) {
  float f[8];
  mla_bf16::unpack8(w, f);
#pragma unroll
  for (int e = 0; e < 8; e++) acc = fmaf(f[e], x[e], acc);
  return acc;
}

// One block's CB output columns from n0 of problem p. R: rows per problem rounded up.
template <int R, typename XT>
__device__ __forceinline__ void gemv_block(const XT* x, const __nv_bfloat16* w, float* y, int rows, int hpg, int H, int K, int N, int p, int n0) {
  constexpr int UNROLL = R <= 2 ? 4 : 2;  // chunks per lane per trip: CB·UNROLL loads in flight
  __shared__ float part[MAX_WARPS][CB * R];
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int C = K / 8, stride = warps * 32;
  const __nv_bfloat16* wp = w + (int64_t)p * N * K;
  const __nv_bfloat16* wr[CB];
#pragma unroll
  for (int j = 0; j < CB; j++) wr[j] = wp + (int64_t)min(n0 + j, N - 1) * K;  // columns past N re-read N − 1; not written
  const XT* xr[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int rr = r < rows ? r : 0;  // rows past the last repeat row 0; not written
    xr[r] = x + ((int64_t)(rr / hpg) * H + p * hpg + rr % hpg) * K;
  }
  float acc[CB][R];
#pragma unroll
  for (int j = 0; j < CB; j++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[j][r] = 0.f;
  for (int c0 = warp * 32 + lane; c0 < C; c0 += stride * UNROLL) {
    uint4 wv[UNROLL][CB];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int c = c0 + u * stride;
#pragma unroll
      for (int j = 0; j < CB; j++) wv[u][j] = c < C ? load_w(wr[j] + c * 8) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int c = c0 + u * stride;
      if (c < C) {
#pragma unroll
        for (int r = 0; r < R; r++) {
          float xv[8];
          load8(xr[r] + c * 8, xv);
#pragma unroll
          for (int j = 0; j < CB; j++) acc[j][r] = dot8(wv[u][j], xv, acc[j][r]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < CB; j++)
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
      for (int off = 16; off; off >>= 1) acc[j][r] += __shfl_xor_sync(0xffffffffu, acc[j][r], off);
      if (lane == 0) part[warp][j * R + r] = acc[j][r];
    }
  __syncthreads();
  const int t = threadIdx.x, j = t / R, r = t % R;
  if (t < CB * R && r < rows && n0 + j < N) {
    float sum = 0.f;
    for (int v = 0; v < warps; v++) sum += part[v][t];
    y[((int64_t)(r / hpg) * H + p * hpg + r % hpg) * N + n0 + j] = sum;
  }
}

// Grid: x = column blocks of CB, y = problem; blockDim.x = 32·warps.
template <int R, typename XT>
__global__ void __launch_bounds__(MAX_WARPS * 32) k_gemv_bf16(const XT* x, const __nv_bfloat16* w, float* y, int rows, int hpg, int H, int K, int N) {
  gemv_block<R, XT>(x, w, y, rows, hpg, H, K, N, blockIdx.y, blockIdx.x * CB);
}

// Several matrices against the same x (one problem each, the same K): a layer's projections of one
// normed input in one launch, so the small ones (MLA's rope keys, 512 rows at llama2-7b) do not each
// run a grid too small to fill the GPU. Grid x: the matrices' column blocks one after another.
constexpr int MAX_MANY = 4;
struct ManyMats {
  const __nv_bfloat16* w[MAX_MANY];
  float* y[MAX_MANY];
  int N[MAX_MANY];
  int firstBlock[MAX_MANY + 1];
  int count;
};
template <int R, typename XT>
__global__ void __launch_bounds__(MAX_WARPS * 32) k_gemv_bf16_many(const XT* x, ManyMats m, int rows, int K) {
  int i = 0;
  while (i + 1 < m.count && (int)blockIdx.x >= m.firstBlock[i + 1]) i++;
  gemv_block<R, XT>(x, m.w[i], m.y[i], rows, 1, 1, K, m.N[i], 0, ((int)blockIdx.x - m.firstBlock[i]) * CB);
}

// Warps per block: as few as cover a row's chunks in one trip of UNROLL chunks per lane (so no load
// slot idles; 4096-wide rows take 4 warps at one or two rows), at most MAX_WARPS (longer rows take
// several trips). Fewer warps per block leave room for more blocks per SM.
template <int R, typename XT>
mla_status launch_rows(const XT* x, const __nv_bfloat16* w, float* y, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  constexpr int UNROLL = R <= 2 ? 4 : 2;  // as in the kernel
  const int64_t chunks = K / 8;
  const int warps = (int)std::max<int64_t>(1, std::min<int64_t>(MAX_WARPS, (chunks + 32 * UNROLL - 1) / (32 * UNROLL)));
  const dim3 grid((unsigned)((N + CB - 1) / CB), (unsigned)P), block(32 * warps);
  k_gemv_bf16<R, XT><<<grid, block, 0, ctx()->stream>>>(x, w, y, (int)rows, (int)hpg, (int)(P * hpg), (int)K, (int)N);
  KERNEL_CHECK();
  return MLA_OK;
}

template <int R, typename XT>
mla_status launch_many_rows(const XT* x, const ManyMats& m, int64_t rows, int64_t K) {
  constexpr int UNROLL = R <= 2 ? 4 : 2;
  const int64_t chunks = K / 8;
  const int warps = (int)std::max<int64_t>(1, std::min<int64_t>(MAX_WARPS, (chunks + 32 * UNROLL - 1) / (32 * UNROLL)));
  k_gemv_bf16_many<R, XT><<<(unsigned)m.firstBlock[m.count], 32 * warps, 0, ctx()->stream>>>(x, m, (int)rows, (int)K);
  KERNEL_CHECK();
  return MLA_OK;
}

template <typename XT>
mla_status launch_many(const XT* x, const ManyMats& m, int64_t rows, int64_t K) {
  if (rows == 1) return launch_many_rows<1>(x, m, rows, K);
  if (rows == 2) return launch_many_rows<2>(x, m, rows, K);
  return launch_many_rows<4>(x, m, rows, K);
}

template <typename XT>
mla_status launch(const XT* x, const __nv_bfloat16* w, float* y, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  if (rows == 1) return launch_rows<1>(x, w, y, P, rows, hpg, K, N);
  if (rows == 2) return launch_rows<2>(x, w, y, P, rows, hpg, K, N);
  return launch_rows<4>(x, w, y, P, rows, hpg, K, N);
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Rows per problem up to which this kernel runs instead of cuBLAS: MHA2MLA_GEMV_ROWS (0–4; 0 = never),
// read at each call; default 4. Measured (docs/benchmarks.md, seventeenth session): one row of
// 4096 → 4096 at 1.75 TB/s against cuBLAS's 1.19, 4096 → 11008 at 3.36 against 3.08; a recorded MLA
// decode step of the llama2-7b shape +7% at batch 1 (4k and 16k context), batch 8 within noise (no
// product there has ≤ 4 rows per matrix). The first version (one warp per column walking K) lost.
int64_t max_rows() {
  const char* v = getenv("MHA2MLA_GEMV_ROWS");
  return v && *v ? std::max<int64_t>(0, std::min<int64_t>(MAX_ROWS, atoll(v))) : MAX_ROWS;
}
}  // namespace

namespace mla {
// Whether gemv_bf16 takes a problem: rows ≤ the limit, K a multiple of 8 (16-byte steps), 16-byte
// aligned rows, sizes within 32-bit indices.
bool gemv_takes(const void* x, bool x_bf16, const void* w, int64_t rows, int64_t K, int64_t N, int64_t P) {
  return rows >= 1 && rows <= max_rows() && K > 0 && K % 8 == 0 && N > 0 && P > 0 && P <= 65535 && N * K < INT32_MAX && aligned16(x) && aligned16(w) && (x_bf16 || K % 4 == 0);
}

// y [T, P·hpg, N] = x [T, P·hpg, K] · w[p]ᵀ per problem p (rows = T·hpg ≤ 4; see gemv_takes). x f32 or bf16.
mla_status gemv_bf16(const void* x, bool x_bf16, const __nv_bfloat16* w, float* y, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  return x_bf16 ? launch((const __nv_bfloat16*)x, w, y, P, rows, hpg, K, N) : launch((const float*)x, w, y, P, rows, hpg, K, N);
}
}  // namespace mla

// y_i [M, N_i] = x [M, K] · w_i [N_i, K]ᵀ for i < count ≤ 4, bf16 weights, in one launch; M ≤ 4 rows.
// Returns MLA_ERR_ARGUMENT (nothing launched) where gemv_takes would refuse one of them: the caller
// then runs them one linear each.
extern "C" mla_status mla_cuda_linear_many(const mla_cuda_buf* x, const mla_cuda_buf* const* ws, mla_cuda_buf* const* ys, int32_t count, int64_t M, int64_t K) {
  NEED_CTX();
  MLA_CHECK(x && ws && ys && count >= 1 && count <= MAX_MANY && (x->dtype == MLA_F32 || x->dtype == MLA_BF16) && x->n == M * K, "linear_many: x [M, K] f32 or bf16 and 1 to 4 weights");
  ManyMats m{};
  m.count = count;
  m.firstBlock[0] = 0;
  for (int i = 0; i < count; i++) {
    const int64_t N = ws[i] ? ws[i]->n / std::max<int64_t>(K, 1) : 0;
    MLA_CHECK(ws[i] && ys[i] && ws[i]->dtype == MLA_BF16 && K > 0 && ws[i]->n == N * K && ys[i]->dtype == MLA_F32 && ys[i]->n == M * N, "linear_many: each w bf16 [N, K] and y f32 [M, N]");
    if (!mla::gemv_takes(x->ptr, x->dtype == MLA_BF16, ws[i]->ptr, M, K, N, 1)) return MLA_FAIL(MLA_ERR_ARGUMENT, "linear_many: a product the one-pass kernel does not take");
    m.w[i] = (const __nv_bfloat16*)ws[i]->ptr;
    m.y[i] = (float*)ys[i]->ptr;
    m.N[i] = (int)N;
    m.firstBlock[i + 1] = m.firstBlock[i] + (int)((N + CB - 1) / CB);
  }
  return x->dtype == MLA_BF16 ? launch_many((const __nv_bfloat16*)x->ptr, m, M, K) : launch_many((const float*)x->ptr, m, M, K);
}
