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
#include <type_traits>
#include <string>
#include <vector>
#include "decode_split.cuh"
#include "kv_quant.cuh"

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

// The same lane's E values of an int8 row (kv_quant.cuh) and the scale of their group (E ≤ 8 consecutive
// values never straddle a group of 32), kept as bytes until used.
template <int E>
struct RawQ8 {
  uint32_t w[(E + 3) / 4];
  float s;
};
template <int E>
__device__ __forceinline__ RawQ8<E> load_q8(const unsigned char* p, const unsigned char* scale) {
  RawQ8<E> r;
  if constexpr (E == 2) r.w[0] = *reinterpret_cast<const unsigned short*>(p);
  else if constexpr (E == 4) r.w[0] = *reinterpret_cast<const uint32_t*>(p);
  else {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    r.w[0] = u.x, r.w[1] = u.y;
  }
  r.s = __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(scale));
  return r;
}
// q · scale in float32, exactly the dequantized value (the product of an 8-bit integer and a bf16 is exact):
// byte e as 2^23 + (q + 128) under float's exponent of 2^23, less 2^23 + 128.
template <int E>
__device__ __forceinline__ float at(const RawQ8<E>& r, int e) {
  const float q = __uint_as_float(__byte_perm(r.w[e / 4] ^ 0x80808080u, 0x4B000000u, 0x7650u | (unsigned)(e % 4))) - 8388736.f;
  return q * r.s;
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
// Q8: the caches are int8 stores (kv_quant.cuh rows of Hkv·DH values, Seq's pointers their bytes).
template <int DH, int G, bool Q8>
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
  // Rows' addresses: bf16 elements, or an int8 row's bytes with its scales at `scales` from its start.
  const int64_t stride = Q8 ? mla::kv_row_bytes((int64_t)Hkv * DH, 8) : (int64_t)Hkv * DH;
  const int64_t col = j * DH + lane * E, scales = mla::kv_scale_offset((int64_t)Hkv * DH, 8) + 2 * (col / mla::kKvGroup);
  using Row = std::conditional_t<Q8, RawQ8<E>, Raw<E>>;
  const __nv_bfloat16* K = sq.c + (Q8 ? 0 : sq.lo * stride + col);
  const __nv_bfloat16* V = sq.kr + (Q8 ? 0 : sq.lo * stride + col);
  const unsigned char* Kq = reinterpret_cast<const unsigned char*>(sq.c) + (Q8 ? sq.lo * stride : 0);
  const unsigned char* Vq = reinterpret_cast<const unsigned char*>(sq.kr) + (Q8 ? sq.lo * stride : 0);
  // The next rows' loads are issued before this iteration's arithmetic (two iterations in flight);
  // rows past the split's end read as zeros and get probability 0.
  Row kn[ROWS], vn[ROWS];
  auto fetch = [&](int64_t r) {
#pragma unroll
    for (int u = 0; u < ROWS; u++) {
      if (r + u < last) {
        if constexpr (Q8) {
          kn[u] = load_q8<E>(Kq + (r + u) * stride + col, Kq + (r + u) * stride + scales);
          vn[u] = load_q8<E>(Vq + (r + u) * stride + col, Vq + (r + u) * stride + scales);
        } else {
          kn[u] = load_raw<E>(K + (r + u) * stride);
          vn[u] = load_raw<E>(V + (r + u) * stride);
        }
      } else {
        kn[u] = Row{};
        vn[u] = Row{};
      }
    }
  };
  fetch(first + warp * ROWS);
  for (int64_t r0 = first + warp * ROWS; r0 < last; r0 += WARPS * ROWS) {
    Row kx[ROWS], vx[ROWS];
#pragma unroll
    for (int u = 0; u < ROWS; u++) kx[u] = kn[u], vx[u] = vn[u];
    fetch(r0 + WARPS * ROWS);
    float s[G][ROWS];
#pragma unroll
    for (int u = 0; u < ROWS; u++) {
      float k[E];
#pragma unroll
      for (int e = 0; e < E; e++) k[e] = at(kx[u], e);
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
        for (int e = 0; e < E; e++) acc[h][e] += p * at(vx[u], e);
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
template <int DH, int G, bool Q8>
Pick pick_of() {
  static int n = 0;
  if (!n && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k_mha_decode<DH, G, Q8>, WARPS * 32, 0) != cudaSuccess || n < 1)) n = 1;
  return {(const void*)k_mha_decode<DH, G, Q8>, n};
}
template <int DH, bool Q8>
Pick pick_g(int64_t g) {
  return g <= 1 ? pick_of<DH, 1, Q8>() : g <= 2 ? pick_of<DH, 2, Q8>() : g <= 4 ? pick_of<DH, 4, Q8>() : pick_of<DH, 8, Q8>();
}
template <bool Q8>
Pick pick(int64_t Dh, int64_t g) { return Dh == 64 ? pick_g<64, Q8>(g) : Dh == 128 ? pick_g<128, Q8>(g) : pick_g<256, Q8>(g); }

// The launch of either build over the sequences' row pointers (bf16 elements or int8 stores' bytes).
mla_status launch(const Pick& pk, const __nv_bfloat16* const* ks, const __nv_bfloat16* const* vs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* q, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dh, float scale) {
  // Splits as the latent kernel takes them (decode_split.cuh), up to four waves of blocks: a block
  // has few rows in flight, so more blocks than fit at once keep the SMs fed as blocks finish.
  const int cap = (int)std::min<int64_t>(std::max<int64_t>(1, 4 * (int64_t)sm_count() * pk.perSm / (B * Hkv)), 1 << 16);
  SplitCall sc;
  if (mla_status e = split_call(sc, ks, vs, lo, n, pos, B, H, Dh, cap)) return e;
  int h32 = (int)H, hkv32 = (int)Hkv;
  float scale2 = scale * LOG2E;
  void* args[] = {(void*)&sc.seqs, (void*)&sc.pos, &window, (void*)&q, &h32, &hkv32, &scale2, &sc.splits, &sc.minTiles, (void*)&o, &sc.opart, &sc.lsepart};
  CUDA_TRY(cudaLaunchKernel(pk.fn, dim3((unsigned)(Hkv * sc.splits), (unsigned)B), dim3(WARPS * 32), args, 0, ctx()->stream));
  return split_merge(sc, window, OutRows{o, 0}, B, H, Dh);
}
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
  return launch(pick<false>(Dh, H / Hkv), ks, vs, lo, n, pos, window, q, o, B, H, Hkv, Dh, scale);
}

mla_status mha_decode_q8(const unsigned char* const* ks, const unsigned char* const* vs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* q, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dh, float scale) {
  MLA_CHECK(mha_decode_takes(H, Hkv, Dh) && B > 0 && B <= 65535, "mha_decode_q8: Dh 64, 128 or 256, Hkv dividing H with at most 8 query heads each, 1 ≤ B ≤ 65,535");
  std::vector<const __nv_bfloat16*> k(B), v(B);
  for (int64_t b = 0; b < B; b++) {
    k[b] = reinterpret_cast<const __nv_bfloat16*>(ks[b]);
    v[b] = reinterpret_cast<const __nv_bfloat16*>(vs[b]);
  }
  return launch(pick<true>(Dh, H / Hkv), k.data(), v.data(), lo, n, pos, window, q, o, B, H, Hkv, Dh, scale);
}
}  // namespace mla
