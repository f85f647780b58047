// Per-head products whose weights are stored k-major: y[t, h, n] = Σ_k x[t, h, k] · w[h / hpg, k, n],
// x [T, H, K], w [G, K, N] (hpg = H / G heads per group), y [T, H, N]. MLA's run-time absorption puts
// each query's nope part through its group's key up-projection this way: k_up_proj is stored
// [G·Dn, L], so K = Dn (112 at llama2-7b) and N = L (2048).
//
// Why not head_linear on the transpose [G, N, K]: with K that short a column is 224 bytes, so the
// row-per-column gemv keeps half its lanes idle and walks 16,384 blocks of one small round trip each
// at a decode step's 1–8 rows (0.6–0.9 TB/s on an H100). Here a lane owns 8 adjacent columns (one
// 16-byte load a k, 512 contiguous bytes a warp) and the block's warps split K: warp w takes
// k = w, w + KW, …, so a block has all of K = 112's loads in flight at once (one memory round trip;
// the first version, one warp walking all of K, 16 k a trip, read at 1.1 TB/s). The warps' partial
// sums meet in shared memory and are added in warp order, so a column's bits depend on K alone
// (deterministic, capture-safe). The rows' x values (rounded to bf16 as linear's narrow rounds them)
// sit in shared memory and are read as broadcasts.
#include <algorithm>
#include <cstdint>
#include "bf16_rows.cuh"
#include "common.cuh"

using mla::ctx;

namespace {
constexpr int KN_MAX_ROWS = 8;  // rows per problem (T·hpg) the kernel can take; kn_rows_limit() below says how many it does
constexpr int KN_MAX_K = 512;   // K the shared x tile holds (16 KB at 8 rows)
constexpr int KN_WARPS = 8;     // warps along K (fewer for short K: each takes ≥ KN_MIN_STEPS k)
constexpr int KN_MIN_STEPS = 8;
// k steps whose loads a lane has in flight at once (256 bytes; 128 from 4 rows, whose 32–64 sums leave room
// for fewer under the 128 registers that let two blocks share an SM; 4 rows spill with 16).
template <int R>
__host__ __device__ constexpr int kn_steps() { return R >= 4 ? 8 : 16; }

// Grid: x = blocks of 256 columns, y = group; blockDim.x = 32·KW. R: rows per problem rounded up to
// 1, 2, 4 or 8.
template <int R>
__global__ void __launch_bounds__(KN_WARPS * 32, 2) k_head_kn(const void* __restrict__ x, bool xbf16, const __nv_bfloat16* __restrict__ w, void* __restrict__ y, bool ybf16, int rows, int hpg, int H, int K, int N) {
  __shared__ float xs[R][KN_MAX_K];
  __shared__ __align__(16) float part[KN_WARPS][256];
  const int p = blockIdx.y, KW = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = blockIdx.x * 256, n = n0 + lane * 8;
  const bool live = n < N;  // lanes past N load nothing and add zeros (every warp meets the barriers)
  const __nv_bfloat16* wp = w + (int64_t)p * K * N + n;
  constexpr int STEPS = kn_steps<R>();
  uint4 wv[STEPS];
  // A trip: this warp's next STEPS k (k0, k0 + KW, …), loads only; the first is issued before the x
  // fill below, which it does not need, so the two round trips overlap.
  const auto load_trip = [&](int k0) {
#pragma unroll
    for (int u = 0; u < STEPS; u++) {
      const int k = k0 + u * KW;
      wv[u] = live && k < K ? mla_bf16::load_weights16(wp + (int64_t)k * N) : make_uint4(0, 0, 0, 0);
    }
  };
  load_trip(warp);
  for (int i = threadIdx.x; i < R * K; i += blockDim.x) {
    const int r = i / K, k = i % K;
    const int rr = r < rows ? r : 0;  // rows past `rows` repeat row 0 (computed, not written)
    const int64_t at = ((int64_t)(rr / hpg) * H + p * hpg + rr % hpg) * K + k;
    xs[r][k] = __bfloat162float(xbf16 ? static_cast<const __nv_bfloat16*>(x)[at] : __float2bfloat16(static_cast<const float*>(x)[at]));
  }
  __syncthreads();
  float acc[R][8];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int e = 0; e < 8; e++) acc[r][e] = 0.f;
  for (int k0 = warp; k0 < K; k0 += KW * STEPS) {
    if (k0 != warp) load_trip(k0);
#pragma unroll
    for (int u = 0; u < STEPS; u++) {
      const int k = k0 + u * KW;
      if (k >= K) break;
      float f[8];
      mla_bf16::unpack8(wv[u], f);
#pragma unroll
      for (int r = 0; r < R; r++) {
        const float xv = xs[r][k];
#pragma unroll
        for (int e = 0; e < 8; e++) acc[r][e] = fmaf(f[e], xv, acc[r][e]);
      }
    }
  }
  // Row by row: each warp's 256 partial sums to shared memory, then thread t adds column t's in warp order.
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (r >= rows) break;
#pragma unroll
    // Two 16-byte stores a lane (8 single floats a lane 32 bytes apart met 8-way bank conflicts).
    for (int e = 0; e < 8; e += 4) *reinterpret_cast<float4*>(&part[warp][lane * 8 + e]) = make_float4(acc[r][e], acc[r][e + 1], acc[r][e + 2], acc[r][e + 3]);
    __syncthreads();
    const int64_t yr = ((int64_t)(r / hpg) * H + p * hpg + r % hpg) * N;
    for (int c = threadIdx.x; c < 256; c += blockDim.x) {
      if (n0 + c >= N) break;
      float sum = 0.f;
      for (int v = 0; v < KW; v++) sum += part[v][c];
      mla_bf16::store_y(y, ybf16, yr + n0 + c, sum);
    }
    __syncthreads();
  }
}

template <int R>
mla_status launch_kn(const void* x, bool xbf16, const __nv_bfloat16* w, void* y, bool ybf16, int64_t G, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  const int warps = (int)std::max<int64_t>(1, std::min<int64_t>(KN_WARPS, K / KN_MIN_STEPS));
  const dim3 grid((unsigned)((N + 255) / 256), (unsigned)G);
  k_head_kn<R><<<grid, 32 * warps, 0, ctx()->stream>>>(x, xbf16, w, y, ybf16, (int)rows, (int)hpg, (int)(G * hpg), (int)K, (int)N);
  KERNEL_CHECK();
  return MLA_OK;
}

}  // namespace

namespace mla {
// Rows per problem up to which the kernel runs instead of cuBLAS: MHA2MLA_HEAD_KN_ROWS (0–8; 0 = never),
// read at each call. Default 4: at 8 rows (batch 8 of llama2-7b's 32 groups) the kernel reads its weight at
// ~1.0 TB/s, and recorded MLA steps ran 2–7% faster with cuBLAS taking those rows (H100, four A/B pairs at
// 4k and 16k × 8, thirty-seventh session); at 1 row it takes ~9.4 µs where the transposed route took ~19.
constexpr int64_t KN_DEFAULT_ROWS = 4;
int64_t kn_rows_limit() {
  const char* v = getenv("MHA2MLA_HEAD_KN_ROWS");
  return v && *v ? std::max<int64_t>(0, std::min<int64_t>(KN_MAX_ROWS, atoll(v))) : KN_DEFAULT_ROWS;
}

bool head_kn_takes(const void* w, int64_t G, int64_t rows, int64_t K, int64_t N) { return G >= 1 && G <= 65535 && rows >= 1 && rows <= kn_rows_limit() && K >= 1 && K <= KN_MAX_K && N % 8 == 0 && mla_bf16::aligned16(w); }

mla_status head_kn_bf16(const void* x, bool x_bf16, const __nv_bfloat16* w, void* y, bool y_bf16, int64_t G, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  if (rows == 1) return launch_kn<1>(x, x_bf16, w, y, y_bf16, G, rows, hpg, K, N);
  if (rows == 2) return launch_kn<2>(x, x_bf16, w, y, y_bf16, G, rows, hpg, K, N);
  if (rows <= 4) return launch_kn<4>(x, x_bf16, w, y, y_bf16, G, rows, hpg, K, N);
  return launch_kn<8>(x, x_bf16, w, y, y_bf16, G, rows, hpg, K, N);
}
}  // namespace mla
