// MHA/GQA decode over bf16 caches in one kernel (FlashDecoding): the counterpart of the fused latent
// kernel (latent_decode.cu), so the original model can decode with the same context splits and decode
// graphs as its MLA conversion. The default for every shape it takes (mha_decode_takes). The cuBLAS
// route (decode_batch.cu) sizes its GEMMs by every sequence's length, which a recorded step cannot
// replay; here lengths are read on the device.
//
// Per block: one sequence, one KV head with its g ≤ 8 query heads, one split of the visible keys
// (decode_split.cuh). Four warps take rows in turn, rows_per_warp(DH, G) at a time (their loads in
// flight together, kept as packed bf16); a lane holds DH/32 dims of each row, the query heads' dots are
// warp sums; each warp keeps an online softmax per head, and the four are merged in shared memory at the
// end. The kernel is instantiated per G in {1, 2, 4, 8} query heads per KV head, so the registers follow
// the model's grouping. Memory bound by design: each K and V row is read once from HBM for all g heads.
//
// Shapes: q [B, H, DH] float32; per sequence b keys k_b [≥ pos_b + 1, Hkv, DH] and values v_b [.., Hkv, DH],
// bf16; o [B, H, DH] float32. Query head h reads KV head h / (H / Hkv). DH in {64, 128, 256}.
#include <algorithm>
#include <string>
#include <vector>
#include "decode_split.cuh"

using mla::ctx;

namespace {
constexpr int WARPS = 4;
constexpr int GMAX = 8;   // query heads per KV head

// A lane's E = DH/32 consecutive bf16 of a row, kept packed (E/2 registers) until used: a warp then has
// more rows in flight for the same registers than with floats.
template <int E>
struct Raw {
  uint32_t w[E / 2];
};
template <int E>
__device__ __forceinline__ Raw<E> load_raw(const __nv_bfloat16* p) {
  Raw<E> r;
  if constexpr (E == 2) r.w[0] = *reinterpret_cast<const uint32_t*>(p);
  else if constexpr (E == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    r.w[0] = u.x, r.w[1] = u.y;
  } else {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    r.w[0] = u.x, r.w[1] = u.y, r.w[2] = u.z, r.w[3] = u.w;
  }
  return r;
}
template <int E>
__device__ __forceinline__ float at(const Raw<E>& r, int e) {
  const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&r.w[e / 2]));
  return e % 2 ? f.y : f.x;
}

// Rows a warp keeps in flight per iteration, for head dim DH and G query heads per KV head: as many as
// keep the registers of the two iterations' raw K and V rows, the query, the accumulators and the
// scores (counted twice: their shuffled sums) within 170, and at least the first version's 4 (at llama2-7b's MHA heads, G = 1 and DH 128, 16 rows: ~6× the bytes in flight of the
// first version's 4 rows of floats for 8 heads, which read the cache at 12–16% of the HBM bound).
__host__ __device__ constexpr int rows_per_warp(int DH, int G) {
  const int E = DH / 32;
  int rows = 16;
  while (rows > 4 && 2 * rows * E + 2 * G * E + 2 * G * rows > 170) rows /= 2;
  return rows;
}

// Grid: x = KV head + Hkv · split, y = sequence; WARPS · 32 threads. g = H / Hkv ≤ G query heads.
template <int DH, int G>
__global__ void __launch_bounds__(WARPS * 32)
k_mha_decode(const Seq* seqs, const int32_t* pos, int64_t window, const float* q, int H, int Hkv, float scale2, int gridSplits, int minTiles, float* o, float* opart, float* lsepart) {
  constexpr int E = DH / 32, ROWS = rows_per_warp(DH, G);
  __shared__ float sAcc[WARPS][G][DH];
  __shared__ float sM[WARPS][G], sL[WARPS][G];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x % Hkv, split = blockIdx.x / Hkv, b = blockIdx.y, g = H / Hkv;
  const Seq sq = seq_of(seqs, pos, window, b);
  const int nsplit = splits_of(sq.n, gridSplits, minTiles);
  if (split >= nsplit) return;
  const int64_t tiles = (sq.n + TN - 1) / TN, per = (tiles + nsplit - 1) / nsplit;
  const int64_t t0 = split * per < tiles ? split * per : tiles, t1 = t0 + per < tiles ? t0 + per : tiles;
  const int64_t first = t0 * TN, last = t1 * TN < sq.n ? t1 * TN : sq.n;

  float qv[G][E], acc[G][E], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < E; e++) {
      qv[h][e] = h < g ? q[((int64_t)b * H + j * g + h) * DH + lane * E + e] * scale2 : 0.f;
      acc[h][e] = 0.f;
    }
  }
  const int64_t stride = (int64_t)Hkv * DH;  // elements between rows
  const __nv_bfloat16* K = sq.c + (sq.lo) * stride + j * DH + lane * E;
  const __nv_bfloat16* V = sq.kr + (sq.lo) * stride + j * DH + lane * E;
  // The next rows' loads are issued before this iteration's arithmetic (two iterations in flight);
  // rows past the split's end read as zeros and get probability 0.
  Raw<E> kn[ROWS], vn[ROWS];
  auto fetch = [&](int64_t r) {
#pragma unroll
    for (int u = 0; u < ROWS; u++) {
      if (r + u < last) {
        kn[u] = load_raw<E>(K + (r + u) * stride);
        vn[u] = load_raw<E>(V + (r + u) * stride);
      } else {
#pragma unroll
        for (int i = 0; i < E / 2; i++) kn[u].w[i] = vn[u].w[i] = 0u;
      }
    }
  };
  fetch(first + warp * ROWS);
  for (int64_t r0 = first + warp * ROWS; r0 < last; r0 += WARPS * ROWS) {
    Raw<E> kx[ROWS], vx[ROWS];
#pragma unroll
    for (int u = 0; u < ROWS; u++) kx[u] = kn[u], vx[u] = vn[u];
    fetch(r0 + WARPS * ROWS);
    float s[G][ROWS];
#pragma unroll
    for (int u = 0; u < ROWS; u++) {
      float k[E];
#pragma unroll
      for (int e = 0; e < E; e++) k[e] = at<E>(kx[u], e);
#pragma unroll
      for (int h = 0; h < G; h++) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) d += qv[h][e] * k[e];
        s[h][u] = d;
      }
    }
    // The warp sums of all heads and rows, interleaved so the shuffles overlap.
#pragma unroll
    for (int off = 16; off; off >>= 1)
#pragma unroll
      for (int h = 0; h < G; h++)
        if (h < g)
#pragma unroll
          for (int u = 0; u < ROWS; u++) s[h][u] += __shfl_xor_sync(0xffffffffu, s[h][u], off);
#pragma unroll
    for (int h = 0; h < G; h++) {
      if (h >= g) continue;
      float mt = m[h];
#pragma unroll
      for (int u = 0; u < ROWS; u++) mt = r0 + u < last ? fmaxf(mt, s[h][u]) : mt;
      const float alpha = exp2f(m[h] - mt);  // m = −∞ before the first row: α = 0
      float ps = 0.f;
#pragma unroll
      for (int e = 0; e < E; e++) acc[h][e] *= alpha;
#pragma unroll
      for (int u = 0; u < ROWS; u++) {
        const float p = r0 + u < last ? exp2f(s[h][u] - mt) : 0.f;
        ps += p;
#pragma unroll
        for (int e = 0; e < E; e++) acc[h][e] += p * at<E>(vx[u], e);
      }
      l[h] = l[h] * alpha + ps;
      m[h] = mt;
    }
  }
  // Merge the warps: each head's output over all of this split's rows.
#pragma unroll
  for (int h = 0; h < G; h++) {
    if (h >= g) continue;
#pragma unroll
    for (int e = 0; e < E; e++) sAcc[warp][h][lane * E + e] = acc[h][e];
    if (lane == 0) sM[warp][h] = m[h], sL[warp][h] = l[h];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < g * DH; i += blockDim.x) {
    const int h = i / DH, d = i % DH;
    float M = -INFINITY;
    for (int w = 0; w < WARPS; w++) M = fmaxf(M, sM[w][h]);
    float L = 0.f, x = 0.f;
    if (M != -INFINITY)
      for (int w = 0; w < WARPS; w++) {
        const float c = exp2f(sM[w][h] - M);  // a warp that saw no rows: 0
        L += sL[w][h] * c;
        x += sAcc[w][h][d] * c;
      }
    const int64_t row = (int64_t)b * H + j * g + h;
    const float out = L > 0.f ? x / L : 0.f;
    if (nsplit == 1) o[row * DH + d] = out;
    else {
      opart[((int64_t)split * gridDim.y * H + row) * DH + d] = out;
      if (d == 0) lsepart[(int64_t)split * gridDim.y * H + row] = L > 0.f ? M + log2f(L) : -INFINITY;
    }
  }
}

// The instantiation for head dim DH and g query heads per KV head (the smallest G ≥ g), and its
// blocks per SM (once per instantiation).
struct Pick {
  const void* fn;
  int perSm;
};
template <int DH, int G>
Pick pick_of() {
  static int n = 0;
  if (!n && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k_mha_decode<DH, G>, WARPS * 32, 0) != cudaSuccess || n < 1)) n = 1;
  return {(const void*)k_mha_decode<DH, G>, n};
}
template <int DH>
Pick pick_g(int64_t g) {
  return g <= 1 ? pick_of<DH, 1>() : g <= 2 ? pick_of<DH, 2>() : g <= 4 ? pick_of<DH, 4>() : pick_of<DH, 8>();
}
Pick pick(int64_t Dh, int64_t g) { return Dh == 64 ? pick_g<64>(g) : Dh == 128 ? pick_g<128>(g) : pick_g<256>(g); }

}  // namespace

namespace mla {
bool mha_decode_takes(int64_t H, int64_t Hkv, int64_t Dh) {
  if (!((Dh == 64 || Dh == 128 || Dh == 256) && Hkv > 0 && H % Hkv == 0 && H / Hkv <= GMAX)) return false;
  // The kernel unless MHA2MLA_MHA_DECODE=cublas. Since its rows per warp follow the grouping, a
  // recorded step with it beats the cuBLAS route (op by op) at llama2-7b's heads (32/32, Dh 128) by
  // 1.4–2.2× at 4k and 16k, batch 1 and 8, and at smollm-135m's GQA (9/3, Dh 64) by 4–4.7×
  // (docs/benchmarks.md, seventeenth and nineteenth sessions).
  const char* route = getenv("MHA2MLA_MHA_DECODE");
  return !(route && std::string(route) == "cublas");
}

mla_status mha_decode(const __nv_bfloat16* const* ks, const __nv_bfloat16* const* vs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* q, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dh, float scale) {
  MLA_CHECK(mha_decode_takes(H, Hkv, Dh) && B > 0 && B <= 65535, "mha_decode: Dh 64, 128 or 256, Hkv dividing H with at most 8 query heads each, 1 ≤ B ≤ 65,535");
  const Pick pk = pick(Dh, H / Hkv);
  const void* fn = pk.fn;
  const int perSm = pk.perSm;
  // Splits as the latent kernel takes them (decode_split.cuh), up to four waves of blocks: a block
  // has few rows in flight, so more blocks than fit at once keep the SMs fed as blocks finish.
  const int cap = (int)std::min<int64_t>(std::max<int64_t>(1, 4 * (int64_t)sm_count() * perSm / (B * Hkv)), 1 << 16);
  SplitCall sc;
  if (mla_status e = split_call(sc, ks, vs, lo, n, pos, B, H, Dh, cap)) return e;
  int h32 = (int)H, hkv32 = (int)Hkv;
  float scale2 = scale * LOG2E;
  void* args[] = {(void*)&sc.seqs, (void*)&sc.pos, &window, (void*)&q, &h32, &hkv32, &scale2, &sc.splits, &sc.minTiles, (void*)&o, &sc.opart, &sc.lsepart};
  CUDA_TRY(cudaLaunchKernel(fn, dim3((unsigned)(Hkv * sc.splits), (unsigned)B), dim3(WARPS * 32), args, 0, ctx()->stream));
  return split_merge(sc, window, o, B, H, Dh);
}
}  // namespace mla
