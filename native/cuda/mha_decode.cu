// MHA/GQA decode over bf16 caches in one kernel (FlashDecoding): the counterpart of the fused latent
// kernel (latent_decode.cu), so the original model can decode with the same context splits and decode
// graphs as its MLA conversion. The default only for GQA at head dim 64 (mha_decode_takes): per call
// at llama2-7b's heads it reaches 12–16% of the HBM bound where the cuBLAS route reaches 18–69%
// (docs/benchmarks.md). The cuBLAS route (decode_batch.cu) sizes its GEMMs by every sequence's
// length, which a recorded step cannot replay; here lengths are read on the device.
//
// Per block: one sequence, one KV head with its g ≤ 8 query heads, one split of the visible keys
// (decode_split.cuh). Four warps take rows in turn, four rows per warp at a time (their loads in flight
// together); a lane holds DH/32 dims of each row, the query heads' dots are warp sums; each warp keeps
// an online softmax per head, and the four are merged in shared memory at the end. Memory bound by
// design: each K and V row is read once from HBM for all g heads.
//
// Shapes: q [B, H, DH] float32; per sequence b keys k_b [≥ pos_b + 1, Hkv, DH] and values v_b [.., Hkv, DH],
// bf16; o [B, H, DH] float32. Query head h reads KV head h / (H / Hkv). DH in {64, 128, 256}.
#include <algorithm>
#include <string>
#include <vector>
#include "bf16_rows.cuh"
#include "decode_split.cuh"

using mla::ctx;

namespace {
using mla_bf16::load_row;
constexpr int WARPS = 4;
constexpr int ROWS = 4;   // rows per warp per iteration
constexpr int GMAX = 8;   // query heads per KV head

// Grid: x = KV head + Hkv · split, y = sequence; WARPS · 32 threads.
template <int DH>
__global__ void __launch_bounds__(WARPS * 32)
k_mha_decode(const Seq* seqs, const int32_t* pos, int64_t window, const float* q, int H, int Hkv, float scale2, int gridSplits, int minTiles, float* o, float* opart, float* lsepart) {
  constexpr int E = DH / 32;
  __shared__ float sAcc[WARPS][GMAX][DH];
  __shared__ float sM[WARPS][GMAX], sL[WARPS][GMAX];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x % Hkv, split = blockIdx.x / Hkv, b = blockIdx.y, g = H / Hkv;
  const Seq sq = seq_of(seqs, pos, window, b);
  const int nsplit = splits_of(sq.n, gridSplits, minTiles);
  if (split >= nsplit) return;
  const int64_t tiles = (sq.n + TN - 1) / TN, per = (tiles + nsplit - 1) / nsplit;
  const int64_t t0 = split * per < tiles ? split * per : tiles, t1 = t0 + per < tiles ? t0 + per : tiles;
  const int64_t first = t0 * TN, last = t1 * TN < sq.n ? t1 * TN : sq.n;

  float qv[GMAX][E], acc[GMAX][E], m[GMAX], l[GMAX];
#pragma unroll
  for (int h = 0; h < GMAX; h++) {
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
  // The next rows' loads are issued before this iteration's arithmetic (two iterations in flight).
  float kn[ROWS][E], vn[ROWS][E];
  auto fetch = [&](int64_t r) {
#pragma unroll
    for (int u = 0; u < ROWS; u++) {
      if (r + u < last) {
        load_row<E>(K + (r + u) * stride, kn[u]);
        load_row<E>(V + (r + u) * stride, vn[u]);
      } else {
#pragma unroll
        for (int e = 0; e < E; e++) kn[u][e] = vn[u][e] = 0.f;
      }
    }
  };
  fetch(first + warp * ROWS);
  for (int64_t r0 = first + warp * ROWS; r0 < last; r0 += WARPS * ROWS) {
    float kx[ROWS][E], vx[ROWS][E];
#pragma unroll
    for (int u = 0; u < ROWS; u++)
#pragma unroll
      for (int e = 0; e < E; e++) kx[u][e] = kn[u][e], vx[u][e] = vn[u][e];
    fetch(r0 + WARPS * ROWS);
    float s[GMAX][ROWS];
#pragma unroll
    for (int h = 0; h < GMAX; h++)
#pragma unroll
      for (int u = 0; u < ROWS; u++) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) d += qv[h][e] * kx[u][e];
        s[h][u] = d;
      }
    // The warp sums of all heads and rows, interleaved so the shuffles overlap.
#pragma unroll
    for (int off = 16; off; off >>= 1)
#pragma unroll
      for (int h = 0; h < GMAX; h++)
        if (h < g)
#pragma unroll
          for (int u = 0; u < ROWS; u++) s[h][u] += __shfl_xor_sync(0xffffffffu, s[h][u], off);
#pragma unroll
    for (int h = 0; h < GMAX; h++) {
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
        for (int e = 0; e < E; e++) acc[h][e] += p * vx[u][e];
      }
      l[h] = l[h] * alpha + ps;
      m[h] = mt;
    }
  }
  // Merge the warps: each head's output over all of this split's rows.
#pragma unroll
  for (int h = 0; h < GMAX; h++) {
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

template <int DH>
int blocks_per_sm() {
  static int n = 0;
  if (!n && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k_mha_decode<DH>, WARPS * 32, 0) != cudaSuccess || n < 1)) n = 1;
  return n;
}

}  // namespace

namespace mla {
bool mha_decode_takes(int64_t H, int64_t Hkv, int64_t Dh) {
  if (!((Dh == 64 || Dh == 128 || Dh == 256) && Hkv > 0 && H % Hkv == 0 && H / Hkv <= GMAX)) return false;
  // MHA2MLA_MHA_DECODE=kernel takes it wherever it can, =cublas never. Unset: GQA at head dim 64
  // (smollm-135m's 9/3), where a step recorded with it decoded 4–4.7× faster than op by op on the
  // cuBLAS route at batch 1, 8 and 32 (docs/benchmarks.md, seventeenth session); not at llama2-7b's
  // MHA heads (32/32, Dh 128), where per call it is 1.5–4.5× slower than the cuBLAS route and the
  // recorded step lost at batch ≥ 8 (fifteenth session). Other shapes are not measured.
  const char* route = getenv("MHA2MLA_MHA_DECODE");
  if (route && std::string(route) == "kernel") return true;
  if (route && std::string(route) == "cublas") return false;
  return Dh == 64 && H / Hkv >= 2;
}

mla_status mha_decode(const __nv_bfloat16* const* ks, const __nv_bfloat16* const* vs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* q, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dh, float scale) {
  MLA_CHECK(mha_decode_takes(H, Hkv, Dh) && B > 0 && B <= 65535, "mha_decode: Dh 64, 128 or 256, Hkv dividing H with at most 8 query heads each, 1 ≤ B ≤ 65,535");
  const void* fn = Dh == 64 ? (const void*)k_mha_decode<64> : Dh == 128 ? (const void*)k_mha_decode<128> : (const void*)k_mha_decode<256>;
  const int perSm = Dh == 64 ? blocks_per_sm<64>() : Dh == 128 ? blocks_per_sm<128>() : blocks_per_sm<256>();
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
