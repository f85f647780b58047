// Fused causal attention on tensor cores (bf16 inputs, float32 accumulation), forward and backward,
// for B sequences of equal length: the FlashAttention-2 scheme written with mma.sync m16n8k16, so no
// [T, S] score matrix ever reaches memory. Each warp owns 16 rows of a tile; the score fragments it
// computes are reused in registers as the A operand of the next product (the m16n8 accumulator layout
// of two adjacent n-tiles is the m16k16 A layout).
//
// The backward is deterministic (no atomics): one kernel accumulates dK and dV per key tile over every
// query tile and every query head of its KV group, a second accumulates dQ per query tile over the key
// tiles, recomputing the probabilities from the row log-sum-exp. The training forward saves that
// (`lse`), and δ = rowsum(dO ∘ O) then comes from a small row kernel; without saved statistics a
// forward pass in "prep" mode recomputes both. Seven tensor-core products per tile pair, against five
// in FlashAttention-2's atomic dQ.
//
// Small heads (Dh + Dv ≤ 128) keep their constant fragments in registers: the dQ kernel holds its Q
// and dO fragments, the dK/dV kernel its K and V fragments. Fully visible tiles (most of a causal
// matrix) skip the per-element mask. Blocks launch heads-fastest with the heaviest causal tiles first,
// so the last wave is made of short blocks.
//
// Shapes: q[B·T,H,Dh], k[B·S,Hkv,Dh], v[B·S,Hkv,Dv], o/dout[B·T,H,Dv]; query head h uses KV head
// h / (H/Hkv); query row t sits at key position t + off and sees keys (t + off − window, t + off].
// Head dims are template parameters (the pairs mma_dims lists); others take the GEMM route.
#include <cuda_bf16.h>
#include <type_traits>
#include "common.cuh"
#include "mma.cuh"

// Build switches, compared on the H200 in one command by bench/attention-variants.sh (results in
// docs/benchmarks.md); the defaults are the fastest measured and the configuration the CUDA suite ran.
// MLA_MMA_FWD_MT2: two 16-row m-tiles per warp in the forward of small heads (each K/V fragment read
// from shared memory feeds two products; 240 registers, so fewer warps: 5% slower); MLA_MMA_HOLD=0:
// reload the constant fragments per tile.
#ifndef MLA_MMA_FWD_MT2
#define MLA_MMA_FWD_MT2 0
#endif
#ifndef MLA_MMA_HOLD
#define MLA_MMA_HOLD 1
#endif
// Keys per forward tile (64 or 128; 128 measured slower) and the block order (1: the tiles with the
// most causal work are launched first, so the last wave is made of short blocks).
#ifndef MLA_MMA_FWD_KT
#define MLA_MMA_FWD_KT 64
#endif
// Keys per forward tile of wide heads (Dh + Dv > 128; 32 halves the score registers and the K/V
// buffers, so a third block may fit per SM).
#ifndef MLA_MMA_FWD_KT_WIDE
#define MLA_MMA_FWD_KT_WIDE 64
#endif
#ifndef MLA_MMA_HEAVY_FIRST
#define MLA_MMA_HEAVY_FIRST 1
#endif
// Grid layout: 1 puts the heads on grid x (the blocks of one tile index launch together across heads),
// 0 the tiles (the tiles of one head launch together and share its K/V rows in L2).
#ifndef MLA_MMA_HEADS_FAST
#define MLA_MMA_HEADS_FAST 1
#endif
// m-tiles per warp in the backward kernels of small heads (2: each warp owns 32 query rows in dQ, 32
// keys in dK/dV, so every fragment read from shared memory feeds two products; measured 13% slower:
// 255 registers with small spills).
#ifndef MLA_MMA_BWD_KM
#define MLA_MMA_BWD_KM 1
#endif
// MLA_MMA_FOLD_SCALE: the softmax scale rides in the exponent's FMA (max over raw scores, exp2(s·c − m·c))
// and the backward's dS leaves it to the final dQ/dK store: one multiply fewer per score element.
#ifndef MLA_MMA_FOLD_SCALE
#define MLA_MMA_FOLD_SCALE 1
#endif
// MLA_MMA_LEAN (default 1): the per-tile bookkeeping in 32-bit offsets — tile copies whose addresses
// step by constants, masks from one precomputed row-key distance, and a branch-free elementwise pass on
// fully visible tiles — where 0 is the previous code (64-bit index arithmetic and a per-element branch,
// which ncu showed at over half the backward's instructions).
#ifndef MLA_MMA_LEAN
#define MLA_MMA_LEAN 1
#endif
// Blocks per SM the kernels of small heads (Dh + Dv ≤ 128) are compiled for (__launch_bounds__'s
// minimum; 0 leaves it unset). Unset, the forward takes ~130 registers (three blocks per SM); 4 caps it
// at 128 (four blocks, a few bytes of spill); 1–3 let it use ~165 for more overlap at three blocks.
#ifndef MLA_MMA_FWD_MINB
#define MLA_MMA_FWD_MINB 0
#endif
#ifndef MLA_MMA_BWD_MINB
#define MLA_MMA_BWD_MINB 0
#endif

using mla::ctx;
using bf16 = __nv_bfloat16;

namespace {
using namespace mla_mma;
constexpr int WARPS = 4, ROWS = 16 * WARPS;  // a tile: 16 rows per warp
constexpr int PAD = 8;                       // bf16 of padding per shared row: ldmatrix rows hit distinct banks
constexpr float LOG2E = 1.4426950408889634f;

// The tile index of a block, heaviest first when `reverse` (causal rows: the last query tiles see the
// most keys), and its (batch · head) index; grid_of lays out the grid to match.
__device__ __forceinline__ int64_t tile_index(bool reverse) {
  const int64_t n = MLA_MMA_HEADS_FAST ? gridDim.y : gridDim.x, i = MLA_MMA_HEADS_FAST ? blockIdx.y : blockIdx.x;
  return MLA_MMA_HEAVY_FIRST && reverse ? n - 1 - i : i;
}
__device__ __forceinline__ int64_t head_index() { return MLA_MMA_HEADS_FAST ? blockIdx.x : blockIdx.y; }
dim3 grid_of(int64_t tiles, int64_t heads) { return MLA_MMA_HEADS_FAST ? dim3((unsigned)heads, (unsigned)tiles) : dim3((unsigned)tiles, (unsigned)heads); }
// grid.y holds at most 65,535 blocks (grid.x 2³¹ − 1): with the tiles on y, T ≤ 4M rows.
// The kernels address a tile's rows with 32-bit offsets (row · H·D) and compare query − key distances
// in 32 bits; both limits are far beyond real models, and checked rather than assumed.
mla_status check_offsets(int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, int64_t off) {
  const int64_t widest = (H > Hkv ? H : Hkv) * (Dh > Dv ? Dh : Dv);
  if (widest * 128 >= ((int64_t)1 << 31))
    return MLA_FAIL(MLA_ERR_ARGUMENT, "attention_mma: rows of " + std::to_string(widest) + " elements (heads × head dim) are too wide for the tile copies; use MHA2MLA_CUDA_ATTENTION=gemm");
  if (off + T + S >= ((int64_t)1 << 31) - 256 || off + T <= -((int64_t)1 << 30))
    return MLA_FAIL(MLA_ERR_ARGUMENT, "attention_mma: query offset " + std::to_string(off) + " with " + std::to_string(T) + " queries and " + std::to_string(S) + " keys exceeds the kernels' 32-bit positions; use MHA2MLA_CUDA_ATTENTION=gemm");
  return MLA_OK;
}
mla_status check_grid(int64_t tiles, int64_t heads) {
  const int64_t y = MLA_MMA_HEADS_FAST ? tiles : heads, x = MLA_MMA_HEADS_FAST ? heads : tiles;
  if (y > 65535 || x > 2147483647)
    return MLA_FAIL(MLA_ERR_ARGUMENT, "attention_mma: " + std::to_string(tiles) + " tiles × " + std::to_string(heads) + " (batch · head) blocks exceed the CUDA grid (65,535 on y); split the batch or the sequence");
  return MLA_OK;
}

// The A fragments of 16 rows × K of a row-major [row][k] shared matrix (stride ld), for holding in registers.
template <int K>
__device__ __forceinline__ void load_a(uint32_t (*af)[4], const bf16* m, int ld, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) frag_a(af[kk], m, ld, kk * 16, lane);
}
// acc[i][16 × N] += A_i·Bᵀ for the MT m-tiles A_i held in registers (af[i][K/16][4]) and B = N rows × K
// of `b` ([n][k], stride ldb): each B fragment read from shared memory feeds MT products.
template <int K, int N, int MT>
__device__ __forceinline__ void mma_as(float (*acc)[N / 8][4], const uint32_t (*af)[K / 16][4], const bf16* b, int ldb, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++)
#pragma unroll
    for (int j = 0; j < N / 16; j++) {
      uint32_t bf[4];
      frag_b_nk(bf, b, ldb, j * 16, kk * 16, lane);
#pragma unroll
      for (int i = 0; i < MT; i++) {
        mma(acc[i][2 * j], af[i][kk], bf[0], bf[1]);
        mma(acc[i][2 * j + 1], af[i][kk], bf[2], bf[3]);
      }
    }
}
// acc[i][16 × N] += A_i·Bᵀ for MT m-tiles A_i = rows 16i … 16i+15 × K of `a` ([row][k], stride lda),
// read from shared memory one k-slice at a time; each B fragment feeds MT products.
template <int K, int N, int MT>
__device__ __forceinline__ void mma_ss_mt(float (*acc)[N / 8][4], const bf16* a, int lda, const bf16* b, int ldb, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    uint32_t af[MT][1][4];
#pragma unroll
    for (int i = 0; i < MT; i++) frag_a(af[i][0], a + i * 16 * lda, lda, kk * 16, lane);
    mma_as<16, N, MT>(acc, af, b + kk * 16, ldb, lane);
  }
}
// acc[i][16 × N] += P_i·B: P_i = 16 × K accumulator fragments (p[i][K/8][4], the m16n8 layout of two
// adjacent n-tiles is the m16k16 A layout), B = K rows × N of `b` ([k][n], stride ldb).
template <int K, int N, int MT>
__device__ __forceinline__ void mma_rs_mt(float (*acc)[N / 8][4], const float (*p)[K / 8][4], const bf16* b, int ldb, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    uint32_t af[MT][4];
#pragma unroll
    for (int i = 0; i < MT; i++) {
      af[i][0] = pack(p[i][2 * kk][0], p[i][2 * kk][1]);
      af[i][1] = pack(p[i][2 * kk][2], p[i][2 * kk][3]);
      af[i][2] = pack(p[i][2 * kk + 1][0], p[i][2 * kk + 1][1]);
      af[i][3] = pack(p[i][2 * kk + 1][2], p[i][2 * kk + 1][3]);
    }
#pragma unroll
    for (int j = 0; j < N / 16; j++) {
      uint32_t bf[4];
      frag_b_kn(bf, b, ldb, j * 16, kk * 16, lane);
#pragma unroll
      for (int i = 0; i < MT; i++) {
        mma(acc[i][2 * j], af[i], bf[0], bf[1]);
        mma(acc[i][2 * j + 1], af[i], bf[2], bf[3]);
      }
    }
  }
}
// The backward's two score products for MT m-tiles: A's fragments held (HOLD, MT = 1: af, loaded
// once by the caller) or read from `a`.
template <int K, int N, int MT, bool HOLD>
__device__ __forceinline__ void mma_a_mt(float (*acc)[N / 8][4], const uint32_t (*af)[4], const bf16* a, int lda, const bf16* b, int ldb, int lane) {
  if constexpr (HOLD) mma_as<K, N, 1>(acc, reinterpret_cast<const uint32_t (*)[K / 16][4]>(af), b, ldb, lane);
  else mma_ss_mt<K, N, MT>(acc, a, lda, b, ldb, lane);
}

// Starts copying rows [0, R) of a bf16 matrix (row stride ld elements, D columns) into shared
// [R][D+PAD]; rows ≥ valid become zeros. D is a multiple of 8: one 16-byte copy per 8 columns.
template <int D, int R>
__device__ __forceinline__ void load_rows(bf16* sm, const bf16* g, int64_t ld, int64_t valid) {
  constexpr int V = D / 8, N = R * V, NT = WARPS * 32;
  if constexpr (MLA_MMA_LEAN && NT % V == 0) {
    // Each thread copies the same column of rows r0, r0 + NT/V, …: the offsets step by constants.
    const int vr = valid < R ? (int)max(valid, (int64_t)0) : R;
    const int tid = (int)threadIdx.x, r0 = tid / V, c = (tid % V) * 8, ld32 = (int)ld;
#pragma unroll
    for (int it = 0; it < (N + NT - 1) / NT; it++) {
      if (N % NT != 0 && tid + it * NT >= N) break;
      const int r = r0 + it * (NT / V);
      const bool ok = r < vr;
      cp16(sm + r * (D + PAD) + c, g + (ok ? r * ld32 + c : 0), ok);
    }
  } else {
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
      const int r = i / V, c = (i % V) * 8;
      const bool ok = r < valid;
      cp16(sm + r * (D + PAD) + c, ok ? g + r * ld + c : g, ok);
    }
  }
}

__device__ __forceinline__ bool visible(int64_t key, int64_t pos, int64_t S, int64_t window) {
  return key <= pos && key < S && (window <= 0 || key > pos - window);
}
// The same test in 32-bit tile offsets (MLA_MMA_LEAN): rel = query position − key, `key` the key's
// index in its tile, `keys` the keys of the tile that exist (S − first key), `win` the window or
// INT_MAX; no short-circuit, so it compiles to predicates rather than branches.
__device__ __forceinline__ bool sees(int rel, int key, int keys, int win) { return (rel >= 0) & (rel < win) & (key < keys); }
__device__ __forceinline__ int clamp32(int64_t x) { return (int)max((int64_t)-2147483647, min(x, (int64_t)2147483647)); }
__device__ __forceinline__ int window32(int64_t window) { return window > 0 ? clamp32(window) : 2147483647; }

// Forward. grid (grid_of: ⌈T/(ROWS·MT)⌉ tiles, B·H): each warp owns MT m-tiles of 16 query rows. Writes o (float32)
// and, when `lse` is set, the row log-sum-exp in the log2 domain (+∞ for a row with no visible key, so
// the backward's probabilities come out 0), [B·H, T]. In prep mode (dout set) it writes instead of o
// that lse and δ = Σ dout·o. Key/value tiles (KT keys) are double-buffered.
template <int DH, int DV, int MT, int KT>
__global__ void __launch_bounds__(WARPS * 32, DH + DV <= 128 ? MLA_MMA_FWD_MINB : 0) k_forward(const bf16* q, const bf16* k, const bf16* v, float* o, const float* dout, float* lse, float* delta, int64_t T, int64_t S, int H, int Hkv, float scale2, int64_t off, int64_t window) {
  constexpr int QROWS = ROWS * MT;  // queries of the block
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);  // [QROWS queries][DH+PAD]
  bf16* Ks = Qs + QROWS * (DH + PAD);        // 2 × [KT keys][DH+PAD]
  bf16* Vs = Ks + 2 * KT * (DH + PAD);       // 2 × [KT keys][DV+PAD]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t b = head_index() / H;
  const int h = (int)(head_index() % H), kh = h / (H / Hkv);
  const int64_t t0 = tile_index(window <= 0) * QROWS, w0 = t0 + warp * 16 * MT;  // first row of the block, of this warp
  const int64_t qld = (int64_t)H * DH, kld = (int64_t)Hkv * DH, vld = (int64_t)Hkv * DV;
  const bf16* kb = k + b * S * kld + kh * DH;
  const bf16* vb = v + b * S * vld + kh * DV;
  const int64_t khi = min(S - 1, min(T - 1, t0 + QROWS - 1) + off);
  const int64_t klo = window > 0 ? max((int64_t)0, t0 + off - window + 1) : 0;
  const int64_t first = klo / KT * KT;

  load_rows<DH, QROWS>(Qs, q + (b * T + t0) * qld + h * DH, qld, T - t0);
  if (first <= khi) {
    load_rows<DH, KT>(Ks, kb + first * kld, kld, S - first);
    load_rows<DV, KT>(Vs, vb + first * vld, vld, S - first);
  }
  cp_commit();
  uint32_t qf[MT][DH / 16][4];
  float acc[MT][DV / 8][4] = {};
  float m[MT][2], l[MT][2] = {};  // l: this thread's partial row sums
#pragma unroll
  for (int i = 0; i < MT; i++) m[i][0] = m[i][1] = -INFINITY;
  int buf = 0;
  for (int64_t s0 = first; s0 <= khi; s0 += KT, buf ^= 1) {
    if (s0 + KT <= khi) {  // prefetch the next tile into the other buffer
      load_rows<DH, KT>(Ks + (buf ^ 1) * KT * (DH + PAD), kb + (s0 + KT) * kld, kld, S - s0 - KT);
      load_rows<DV, KT>(Vs + (buf ^ 1) * KT * (DV + PAD), vb + (s0 + KT) * vld, vld, S - s0 - KT);
    }
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    if (s0 == first) {
#pragma unroll
      for (int i = 0; i < MT; i++) load_a<DH>(qf[i], Qs + (warp * MT + i) * 16 * (DH + PAD), DH + PAD, lane);
    }
    const bf16* kt = Ks + buf * KT * (DH + PAD);
    const bf16* vt = Vs + buf * KT * (DV + PAD);
    if (!(s0 > w0 + 16 * MT - 1 + off || (window > 0 && s0 + KT - 1 <= w0 + off - window))) {  // some key of the tile is visible to the warp
      float s[MT][KT / 8][4] = {};
      mma_as<DH, KT, MT>(s, qf, kt, DH + PAD, lane);
      // FOLD: m holds raw-score maxima (the scale is positive, so the max commutes with it) and the
      // scale joins the exponent's FMA; otherwise the scores are scaled first.
      constexpr float unit = 1.f;
      const float c = MLA_MMA_FOLD_SCALE ? scale2 : unit;
#pragma unroll
      for (int i = 0; i < MT; i++) {
        const int64_t m0 = w0 + 16 * i, r0 = m0 + g, r1 = r0 + 8;  // this m-tile's first row, this thread's rows
        const bool whole = s0 + KT - 1 <= m0 + off && s0 + KT <= S && (window <= 0 || s0 > m0 + 15 + off - window);
        float mx[2] = {m[i][0], m[i][1]};
        if (MLA_MMA_LEAN && whole) {
#pragma unroll
          for (int j = 0; j < KT / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              if (!MLA_MMA_FOLD_SCALE) s[i][j][e] *= scale2;
              mx[e >> 1] = fmaxf(mx[e >> 1], s[i][j][e]);
            }
        } else if (MLA_MMA_LEAN) {
          // rel of element (j, e): the row's position minus the key, r0 + 8·(e ≥ 2) + off − (s0 + 8j + 2tq + e mod 2).
          const int rel0 = clamp32(r0 + off - s0) - tq * 2, keys = clamp32(S - s0) - tq * 2, win = window32(window);
#pragma unroll
          for (int j = 0; j < KT / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              const float x = MLA_MMA_FOLD_SCALE ? s[i][j][e] : s[i][j][e] * scale2;
              s[i][j][e] = sees(rel0 + (e >> 1) * 8 - j * 8 - (e & 1), j * 8 + (e & 1), keys, win) ? x : -INFINITY;
              mx[e >> 1] = fmaxf(mx[e >> 1], s[i][j][e]);
            }
        } else {
#pragma unroll
          for (int j = 0; j < KT / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              float x = MLA_MMA_FOLD_SCALE ? s[i][j][e] : s[i][j][e] * scale2;
              if (!whole && !visible(s0 + j * 8 + tq * 2 + (e & 1), (e < 2 ? r0 : r1) + off, S, window)) x = -INFINITY;
              s[i][j][e] = x;
              mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float base[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
          base[r] = mx[r] == -INFINITY ? 0.f : mx[r] * c;
          // The earlier tiles' probabilities were taken against base_old = round(m_old·c): rescale by
          // exactly 2^(base_old − base), which is 1 when the maximum did not move (an FMA here would
          // keep m·c's rounding error and compound it tile after tile on long rows). __fmul_rn is
          // never contracted into an FMA.
          const float alpha = ex2(__fmul_rn(m[i][r], c) - base[r]);
          m[i][r] = mx[r];
          l[i][r] *= alpha;
#pragma unroll
          for (int j = 0; j < DV / 8; j++) acc[i][j][2 * r] *= alpha, acc[i][j][2 * r + 1] *= alpha;
        }
#pragma unroll
        for (int j = 0; j < KT / 8; j++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const float p = ex2(fmaf(s[i][j][e], c, -base[e >> 1]));
            s[i][j][e] = p;
            l[i][e >> 1] += p;
          }
      }
      // acc_i += P_i·V: the score accumulators of two adjacent n-tiles are the m16k16 A fragment.
      mma_rs_mt<KT, DV, MT>(acc, s, vt, DV + PAD, lane);
    }
    __syncthreads();  // the buffer is consumed before the next prefetch overwrites it
  }
  cp_wait<0>();  // no copy outlives the kernel (a block with no visible key tile)
#pragma unroll
  for (int i = 0; i < MT; i++) {
    const int64_t rows[2] = {w0 + 16 * i + g, w0 + 16 * i + g + 8};
#pragma unroll
    for (int r = 0; r < 2; r++) {
      l[i][r] += __shfl_xor_sync(0xffffffffu, l[i][r], 1);
      l[i][r] += __shfl_xor_sync(0xffffffffu, l[i][r], 2);
      const float inv = l[i][r] > 0 ? 1.f / l[i][r] : 0.f;  // no visible key: zeros
      const int64_t at = head_index() * T + rows[r];
      if (!dout) {
        if (rows[r] >= T) continue;
        float* out = o + ((b * T + rows[r]) * H + h) * DV + tq * 2;
#pragma unroll
        for (int j = 0; j < DV / 8; j++) *reinterpret_cast<float2*>(out + j * 8) = make_float2(acc[i][j][2 * r] * inv, acc[i][j][2 * r + 1] * inv);
        if (lse && tq == 0) lse[at] = l[i][r] > 0 ? m[i][r] * (MLA_MMA_FOLD_SCALE ? scale2 : 1.f) + log2f(l[i][r]) : INFINITY;
        continue;
      }
      float dot = 0;
      if (rows[r] < T) {
        const float* d = dout + ((b * T + rows[r]) * H + h) * DV + tq * 2;
#pragma unroll
        for (int j = 0; j < DV / 8; j++) dot += d[j * 8] * acc[i][j][2 * r] + d[j * 8 + 1] * acc[i][j][2 * r + 1];
      }
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      if (tq == 0 && rows[r] < T) {
        lse[at] = l[i][r] > 0 ? m[i][r] * (MLA_MMA_FOLD_SCALE ? scale2 : 1.f) + log2f(l[i][r]) : INFINITY;
        delta[at] = dot * inv;
      }
    }
  }
}

// δ[b·H + h, t] = Σ_d dout[b·T + t, h, d]·o[b·T + t, h, d] (float32, as the prep pass computes it from
// the same o): one warp per (b, t, h) row.
__global__ void k_row_dot(const float* dout, const float* o, float* delta, int64_t rows, int64_t T, int H, int DV) {
  const int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float sum = 0;
  for (int d = lane; d < DV; d += 32) sum += dout[r * DV + d] * o[r * DV + d];
#pragma unroll
  for (int w = 16; w; w >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, w);
  if (lane == 0) {
    const int64_t bt = r / H, b = bt / T, t = bt % T;
    delta[(b * H + r % H) * T + t] = sum;
  }
}

// Row statistics of row r (+∞ / 0 past the end: probabilities 0).
__device__ __forceinline__ void row_stats(const float* lse, const float* delta, int64_t base, int64_t r, int64_t T, float* L, float* D) {
  *L = r < T ? lse[base + r] : INFINITY;
  *D = r < T ? delta[base + r] : 0.f;
}

// dQ. grid (grid_of: ⌈T/(ROWS·KM)⌉ tiles, B·H): per query tile (each warp KM m-tiles of 16 rows), over the key tiles
// it sees (double-buffered): P = exp2(scale2·QKᵀ − lse), dS = P ∘ (dO·Vᵀ − δ)·scale, dQ += dS·K.
template <int DH, int DV, int KM>
__global__ void __launch_bounds__(WARPS * 32, DH + DV <= 128 ? MLA_MMA_BWD_MINB : 0) k_backward_dq(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* delta, float* dq, int64_t T, int64_t S, int H, int Hkv, float scale, float scale2, int64_t off, int64_t window) {
  constexpr int QROWS = ROWS * KM;  // queries of the block
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);  // [QROWS queries][DH+PAD]
  bf16* dOs = Qs + QROWS * (DH + PAD);       // [QROWS queries][DV+PAD]
  bf16* Ks = dOs + QROWS * (DV + PAD);       // 2 × [ROWS keys][DH+PAD]
  bf16* Vs = Ks + 2 * ROWS * (DH + PAD);     // 2 × [ROWS keys][DV+PAD]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t b = head_index() / H;
  const int h = (int)(head_index() % H), kh = h / (H / Hkv);
  const int64_t t0 = tile_index(window <= 0) * QROWS, w0 = t0 + warp * 16 * KM;
  const int64_t qld = (int64_t)H * DH, dld = (int64_t)H * DV, kld = (int64_t)Hkv * DH, vld = (int64_t)Hkv * DV;
  const bf16* kb = k + b * S * kld + kh * DH;
  const bf16* vb = v + b * S * vld + kh * DV;
  const int64_t khi = min(S - 1, min(T - 1, t0 + QROWS - 1) + off);
  const int64_t klo = window > 0 ? max((int64_t)0, t0 + off - window + 1) : 0;
  const int64_t first = klo / ROWS * ROWS;
  load_rows<DH, QROWS>(Qs, q + (b * T + t0) * qld + h * DH, qld, T - t0);
  load_rows<DV, QROWS>(dOs, dout + (b * T + t0) * dld + h * DV, dld, T - t0);
  if (first <= khi) {
    load_rows<DH, ROWS>(Ks, kb + first * kld, kld, S - first);
    load_rows<DV, ROWS>(Vs, vb + first * vld, vld, S - first);
  }
  cp_commit();
  float L[KM][2], D[KM][2];
#pragma unroll
  for (int i = 0; i < KM; i++)
#pragma unroll
    for (int r = 0; r < 2; r++) row_stats(lse, delta, head_index() * T, w0 + 16 * i + g + 8 * r, T, &L[i][r], &D[i][r]);
  const bf16* qw = Qs + warp * 16 * KM * (DH + PAD);
  const bf16* dw = dOs + warp * 16 * KM * (DV + PAD);
  constexpr bool HOLD = KM == 1 && MLA_MMA_HOLD && DH + DV <= 128;
  uint32_t qf[HOLD ? DH / 16 : 1][4], df[HOLD ? DV / 16 : 1][4];
  float acc[KM][DH / 8][4] = {};
  int buf = 0;
  for (int64_t s0 = first; s0 <= khi; s0 += ROWS, buf ^= 1) {
    if (s0 + ROWS <= khi) {
      load_rows<DH, ROWS>(Ks + (buf ^ 1) * ROWS * (DH + PAD), kb + (s0 + ROWS) * kld, kld, S - s0 - ROWS);
      load_rows<DV, ROWS>(Vs + (buf ^ 1) * ROWS * (DV + PAD), vb + (s0 + ROWS) * vld, vld, S - s0 - ROWS);
    }
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    if constexpr (HOLD) {
      if (s0 == first) load_a<DH>(qf, qw, DH + PAD, lane), load_a<DV>(df, dw, DV + PAD, lane);
    }
    const bf16* kt = Ks + buf * ROWS * (DH + PAD);
    const bf16* vt = Vs + buf * ROWS * (DV + PAD);
    if (!(s0 > w0 + 16 * KM - 1 + off || (window > 0 && s0 + ROWS - 1 <= w0 + off - window))) {  // some key of the tile is visible to the warp
      float p[KM][ROWS / 8][4] = {}, dp[KM][ROWS / 8][4] = {};
      mma_a_mt<DH, ROWS, KM, HOLD>(p, qf, qw, DH + PAD, kt, DH + PAD, lane);
      mma_a_mt<DV, ROWS, KM, HOLD>(dp, df, dw, DV + PAD, vt, DV + PAD, lane);
#pragma unroll
      for (int i = 0; i < KM; i++) {
        const int64_t m0 = w0 + 16 * i, r0 = m0 + g;
        // Every key of the tile visible to every row of the m-tile (most tiles): no per-element mask.
        const bool whole = s0 + ROWS - 1 <= m0 + off && s0 + ROWS <= S && (window <= 0 || s0 > m0 + 15 + off - window);
        if (MLA_MMA_LEAN) {
          // As in the forward: rel = r0 + 8·(e ≥ 2) + off − (s0 + 8j + 2tq + e mod 2). Two copies of the
          // pass, so fully visible tiles (most of them) carry no mask instructions at all.
          const int rel0 = clamp32(r0 + off - s0) - tq * 2, keys = clamp32(S - s0) - tq * 2, win = window32(window);
          auto pass = [&](auto masked) {
#pragma unroll
            for (int j = 0; j < ROWS / 8; j++)
#pragma unroll
              for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const float pr = ex2(fmaf(p[i][j][e], scale2, -L[i][r]));
                const float ds = MLA_MMA_FOLD_SCALE ? pr * (dp[i][j][e] - D[i][r]) : pr * (dp[i][j][e] - D[i][r]) * scale;  // dS (FOLD: ÷ scale)
                if constexpr (decltype(masked)::value) p[i][j][e] = sees(rel0 + r * 8 - j * 8 - (e & 1), j * 8 + (e & 1), keys, win) ? ds : 0.f;
                else p[i][j][e] = ds;
              }
          };
          if (whole) pass(std::false_type{});
          else pass(std::true_type{});
        } else {
#pragma unroll
          for (int j = 0; j < ROWS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              const int r = e >> 1;
              const bool ok = whole || visible(s0 + j * 8 + tq * 2 + (e & 1), r0 + 8 * r + off, S, window);
              const float pr = ok ? ex2(fmaf(p[i][j][e], scale2, -L[i][r])) : 0.f;
              p[i][j][e] = MLA_MMA_FOLD_SCALE ? pr * (dp[i][j][e] - D[i][r]) : pr * (dp[i][j][e] - D[i][r]) * scale;  // dS (FOLD: ÷ scale)
            }
        }
      }
      mma_rs_mt<ROWS, DH, KM>(acc, p, kt, DH + PAD, lane);
    }
    __syncthreads();
  }
  cp_wait<0>();
  const float fin = MLA_MMA_FOLD_SCALE ? scale : 1.f;  // the scale dS left out
#pragma unroll
  for (int i = 0; i < KM; i++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int64_t row = w0 + 16 * i + g + 8 * r;
      if (row >= T) continue;
      float* out = dq + ((b * T + row) * H + h) * DH + tq * 2;
#pragma unroll
      for (int j = 0; j < DH / 8; j++) *reinterpret_cast<float2*>(out + j * 8) = make_float2(acc[i][j][2 * r] * fin, acc[i][j][2 * r + 1] * fin);
    }
}

// dK and dV. grid (grid_of: ⌈S/(ROWS·KM)⌉ tiles, B·Hkv): per key tile (each warp KM m-tiles of 16 keys), over the
// query heads of the group and the query tiles that see it (QR rows at a time, double-buffered), in
// transposed form: Pᵀ = exp2(scale2·K·Qᵀ − lse), dV += Pᵀ·dO, dSᵀ = Pᵀ ∘ (V·dOᵀ − δ)·scale, dK += dSᵀ·Q.
template <int DH, int DV, int QR, int KM>
__global__ void __launch_bounds__(WARPS * 32, DH + DV <= 128 ? MLA_MMA_BWD_MINB : 0) k_backward_dkdv(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* delta, float* dk, float* dv, int64_t T, int64_t S, int H, int Hkv, float scale, float scale2, int64_t off, int64_t window) {
  constexpr int KROWS = ROWS * KM;  // keys of the block
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [KROWS keys][DH+PAD]
  bf16* Vs = Ks + KROWS * (DH + PAD);        // [KROWS keys][DV+PAD]
  bf16* Qs = Vs + KROWS * (DV + PAD);        // 2 × [QR queries][DH+PAD]
  bf16* dOs = Qs + 2 * QR * (DH + PAD);      // 2 × [QR queries][DV+PAD]
  float* Ls = reinterpret_cast<float*>(dOs + 2 * QR * (DV + PAD));  // 2 × [QR]
  float* Ds = Ls + 2 * QR;                                          // 2 × [QR]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t b = head_index() / Hkv;
  const int kh = (int)(head_index() % Hkv), group = H / Hkv;
  const int64_t s0 = tile_index(false) * KROWS, w0 = s0 + warp * 16 * KM;  // keys (causal: the first tiles are the heaviest)
  const int64_t qld = (int64_t)H * DH, dld = (int64_t)H * DV, kld = (int64_t)Hkv * DH, vld = (int64_t)Hkv * DV;
  // Queries that see some key of the tile: position t + off in [s0, s0 + KROWS − 1 + window).
  const int64_t tlo = max((int64_t)0, s0 - off) / QR * QR;
  const int64_t thi = window > 0 ? min(T - 1, s0 + KROWS - 1 + window - 1 - off) : T - 1;
  const int64_t tiles = thi >= tlo ? (thi - tlo) / QR + 1 : 0, steps = tiles * group;  // (head, query tile) pairs
  auto fetch = [&](int64_t step, int into) {
    const int h = kh * group + (int)(step / tiles);
    const int64_t t0 = tlo + (step % tiles) * QR;
    load_rows<DH, QR>(Qs + into * QR * (DH + PAD), q + (b * T + t0) * qld + h * DH, qld, T - t0);
    load_rows<DV, QR>(dOs + into * QR * (DV + PAD), dout + (b * T + t0) * dld + h * DV, dld, T - t0);
    for (int i = threadIdx.x; i < QR; i += blockDim.x) row_stats(lse, delta, (b * H + h) * T, t0 + i, T, &Ls[into * QR + i], &Ds[into * QR + i]);
  };
  load_rows<DH, KROWS>(Ks, k + (b * S + s0) * kld + kh * DH, kld, S - s0);
  load_rows<DV, KROWS>(Vs, v + (b * S + s0) * vld + kh * DV, vld, S - s0);
  if (steps > 0) fetch(0, 0);
  cp_commit();
  const bf16* kw = Ks + warp * 16 * KM * (DH + PAD);
  const bf16* vw = Vs + warp * 16 * KM * (DV + PAD);
  constexpr bool HOLD = KM == 1 && MLA_MMA_HOLD && DH + DV <= 128;
  uint32_t kf[HOLD ? DH / 16 : 1][4], vf[HOLD ? DV / 16 : 1][4];
  float dka[KM][DH / 8][4] = {}, dva[KM][DV / 8][4] = {};
  for (int64_t step = 0; step < steps; step++) {
    const int buf = (int)(step & 1);
    if (step + 1 < steps) fetch(step + 1, buf ^ 1);
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    if constexpr (HOLD) {
      if (step == 0) load_a<DH>(kf, kw, DH + PAD, lane), load_a<DV>(vf, vw, DV + PAD, lane);
    }
    const int64_t t0 = tlo + (step % tiles) * QR;
    if (!(w0 > t0 + QR - 1 + off || (window > 0 && w0 + 16 * KM - 1 <= t0 + off - window))) {  // some query of the tile sees the warp's keys
      const bf16* qt = Qs + buf * QR * (DH + PAD);
      const bf16* dt = dOs + buf * QR * (DV + PAD);
      const float* Lt = Ls + buf * QR;
      const float* Dt = Ds + buf * QR;
      float p[KM][QR / 8][4] = {}, dp[KM][QR / 8][4] = {};
      mma_a_mt<DH, QR, KM, HOLD>(p, kf, kw, DH + PAD, qt, DH + PAD, lane);
      mma_a_mt<DV, QR, KM, HOLD>(dp, vf, vw, DV + PAD, dt, DV + PAD, lane);
#pragma unroll
      for (int i = 0; i < KM; i++) {
        const int64_t m0 = w0 + 16 * i, c0 = m0 + g;
        // Every query of the tile sees every key of the m-tile (most tiles): no per-element mask.
        const bool whole = m0 + 15 <= t0 + off && m0 + 15 < S && (window <= 0 || m0 > t0 + QR - 1 + off - window);
        if (MLA_MMA_LEAN) {
          // Rows are keys c0, c0 + 8 and columns queries: rel = t0 + 8j + 2tq + e mod 2 + off − (c0 + 8·(e ≥ 2)).
          // Two copies of the pass, so fully visible tiles carry no mask instructions.
          const int rel0 = clamp32(t0 + off - c0) + tq * 2, win = window32(window);
          const bool key0 = c0 < S, key1 = c0 + 8 < S;
          auto pass = [&](auto masked) {
#pragma unroll
            for (int j = 0; j < QR / 8; j++) {
              const float2 lj = *reinterpret_cast<const float2*>(Lt + j * 8 + tq * 2);  // the two query columns of this thread
              const float2 dj = *reinterpret_cast<const float2*>(Dt + j * 8 + tq * 2);
#pragma unroll
              for (int e = 0; e < 4; e++) {
                const float pr = ex2(fmaf(p[i][j][e], scale2, -((e & 1) ? lj.y : lj.x)));
                const float ds = MLA_MMA_FOLD_SCALE ? pr * (dp[i][j][e] - ((e & 1) ? dj.y : dj.x)) : pr * (dp[i][j][e] - ((e & 1) ? dj.y : dj.x)) * scale;  // dSᵀ (FOLD: ÷ scale)
                if constexpr (decltype(masked)::value) {
                  const int rel = rel0 + j * 8 + (e & 1) - (e >> 1) * 8;
                  const bool ok = (rel >= 0) & (rel < win) & (e < 2 ? key0 : key1);
                  p[i][j][e] = ok ? pr : 0.f;
                  dp[i][j][e] = ok ? ds : 0.f;
                } else {
                  p[i][j][e] = pr;
                  dp[i][j][e] = ds;
                }
              }
            }
          };
          if (whole) pass(std::false_type{});
          else pass(std::true_type{});
        } else {
#pragma unroll
          for (int j = 0; j < QR / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              const int col = j * 8 + tq * 2 + (e & 1);
              const bool ok = whole || visible(e < 2 ? c0 : c0 + 8, t0 + col + off, S, window);
              const float pr = ok ? ex2(fmaf(p[i][j][e], scale2, -Lt[col])) : 0.f;
              p[i][j][e] = pr;
              dp[i][j][e] = MLA_MMA_FOLD_SCALE ? pr * (dp[i][j][e] - Dt[col]) : pr * (dp[i][j][e] - Dt[col]) * scale;  // dSᵀ (FOLD: ÷ scale)
            }
        }
      }
      mma_rs_mt<QR, DV, KM>(dva, p, dt, DV + PAD, lane);
      mma_rs_mt<QR, DH, KM>(dka, dp, qt, DH + PAD, lane);
    }
    __syncthreads();
  }
  cp_wait<0>();
  const float fin = MLA_MMA_FOLD_SCALE ? scale : 1.f;  // the scale dSᵀ left out
#pragma unroll
  for (int i = 0; i < KM; i++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int64_t key = w0 + 16 * i + g + 8 * r;
      if (key >= S) continue;
      float* ko = dk + ((b * S + key) * Hkv + kh) * DH + tq * 2;
      float* vo = dv + ((b * S + key) * Hkv + kh) * DV + tq * 2;
#pragma unroll
      for (int j = 0; j < DH / 8; j++) *reinterpret_cast<float2*>(ko + j * 8) = make_float2(dka[i][j][2 * r] * fin, dka[i][j][2 * r + 1] * fin);
#pragma unroll
      for (int j = 0; j < DV / 8; j++) *reinterpret_cast<float2*>(vo + j * 8) = make_float2(dva[i][j][2 * r], dva[i][j][2 * r + 1]);
    }
}

// Two m-tiles per warp where the fragments fit in registers (see the top of the file).
constexpr int forward_mtiles(int DH, int DV) { return MLA_MMA_FWD_MT2 && DH + DV <= 128 ? 2 : 1; }
constexpr int forward_keys(int DH, int DV) { return DH + DV <= 128 ? MLA_MMA_FWD_KT : MLA_MMA_FWD_KT_WIDE; }
constexpr size_t forward_smem(int DH, int DV) { return sizeof(bf16) * (forward_mtiles(DH, DV) * ROWS * (DH + PAD) + 2 * forward_keys(DH, DV) * (DH + DV + 2 * PAD)); }
constexpr int backward_mtiles(int DH, int DV) { return DH + DV <= 128 ? MLA_MMA_BWD_KM : 1; }
// dK/dV query rows per step: fewer where the dK/dV accumulators are many (wide heads, two m-tiles).
constexpr int backward_queries(int DH, int DV) { return DH + DV > 128 || backward_mtiles(DH, DV) > 1 ? 32 : 64; }
constexpr size_t dq_smem(int DH, int DV, int KM) { return sizeof(bf16) * ((KM + 2) * ROWS * (DH + DV + 2 * PAD)); }
constexpr size_t dkdv_smem(int DH, int DV, int QR, int KM) { return sizeof(bf16) * (KM * ROWS * (DH + DV + 2 * PAD) + 2 * QR * (DH + DV + 2 * PAD)) + sizeof(float) * 4 * QR; }

template <typename F>
mla_status allow_smem(F* kernel, size_t bytes) {
  if (bytes > 48 * 1024) CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  return MLA_OK;
}

struct Problem {
  int64_t B, T, S;
  int H, Hkv;
  float scale;
  int64_t off, window;
};

template <int DH, int DV>
mla_status forward(const bf16* q, const bf16* k, const bf16* v, float* o, const float* dout, float* lse, float* delta, const Problem& p) {
  constexpr int MT = forward_mtiles(DH, DV), KT = forward_keys(DH, DV);
  const size_t smem = forward_smem(DH, DV);
  if (mla_status e = allow_smem(k_forward<DH, DV, MT, KT>, smem)) return e;
  const int64_t tiles = (p.T + ROWS * MT - 1) / (ROWS * MT);
  if (mla_status e = check_grid(tiles, p.B * p.H)) return e;
  const dim3 grid = grid_of(tiles, p.B * p.H);
  k_forward<DH, DV, MT, KT><<<grid, WARPS * 32, smem, ctx()->stream>>>(q, k, v, o, dout, lse, delta, p.T, p.S, p.H, p.Hkv, p.scale * LOG2E, p.off, p.window);
  KERNEL_CHECK();
  return MLA_OK;
}

template <int DH, int DV>
mla_status backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* delta, float* dq, float* dk, float* dv, const Problem& p) {
  constexpr int KM = backward_mtiles(DH, DV), QR = backward_queries(DH, DV);
  const size_t s1 = dq_smem(DH, DV, KM), s2 = dkdv_smem(DH, DV, QR, KM);
  if (mla_status e = allow_smem(k_backward_dq<DH, DV, KM>, s1)) return e;
  if (mla_status e = allow_smem(k_backward_dkdv<DH, DV, QR, KM>, s2)) return e;
  const float s2l = p.scale * LOG2E;
  if (mla_status e = check_grid((p.T + ROWS * KM - 1) / (ROWS * KM), p.B * p.H)) return e;
  if (mla_status e = check_grid((p.S + ROWS * KM - 1) / (ROWS * KM), p.B * p.Hkv)) return e;
  k_backward_dq<DH, DV, KM><<<grid_of((p.T + ROWS * KM - 1) / (ROWS * KM), p.B * p.H), WARPS * 32, s1, ctx()->stream>>>(q, k, v, dout, lse, delta, dq, p.T, p.S, p.H, p.Hkv, p.scale, s2l, p.off, p.window);
  KERNEL_CHECK();
  k_backward_dkdv<DH, DV, QR, KM><<<grid_of((p.S + ROWS * KM - 1) / (ROWS * KM), p.B * p.Hkv), WARPS * 32, s2, ctx()->stream>>>(q, k, v, dout, lse, delta, dk, dv, p.T, p.S, p.H, p.Hkv, p.scale, s2l, p.off, p.window);
  KERNEL_CHECK();
  return MLA_OK;
}

// The head-dim pairs (Dh, Dv) compiled: Llama-family 64 and 128, DeepSeek's 192/128.
#define MMA_DIMS(X) X(64, 64) X(128, 128) X(192, 128)
}  // namespace

namespace mla {
bool attention_mma_dims(int64_t Dh, int64_t Dv) {
#define MMA_MATCH(a, b) if (Dh == a && Dv == b) return true;
  MMA_DIMS(MMA_MATCH)
#undef MMA_MATCH
  return false;
}

mla_status attention_mma(const void* q, const void* k, const void* v, float* o, float* lse, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  if (!(scale > 0)) return MLA_FAIL(MLA_ERR_ARGUMENT, "attention_mma: the softmax scale must be positive (the kernels take the row maximum of unscaled scores), got " + std::to_string(scale));
  if (mla_status e = check_offsets(T, S, H, Hkv, Dh, Dv, off)) return e;
  const Problem p{B, T, S, (int)H, (int)Hkv, scale, off, window};
  auto* Q = (const bf16*)q;
  auto* K = (const bf16*)k;
  auto* V = (const bf16*)v;
#define MMA_FORWARD(a, b) \
  if (Dh == a && Dv == b) return forward<a, b>(Q, K, V, o, nullptr, lse, nullptr, p);
  MMA_DIMS(MMA_FORWARD)
#undef MMA_FORWARD
  return MLA_FAIL(MLA_ERR_INTERNAL, "attention_mma: unsupported head dims " + std::to_string(Dh) + "/" + std::to_string(Dv));
}

mla_status attention_mma_backward(const void* q, const void* k, const void* v, const void* dout_bf16, const float* dout, const float* o, const float* saved_lse, float* lse, float* delta, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  if (!(scale > 0)) return MLA_FAIL(MLA_ERR_ARGUMENT, "attention_mma_backward: the softmax scale must be positive, got " + std::to_string(scale));
  if (mla_status e = check_offsets(T, S, H, Hkv, Dh, Dv, off)) return e;
  const Problem p{B, T, S, (int)H, (int)Hkv, scale, off, window};
  auto* Q = (const bf16*)q;
  auto* K = (const bf16*)k;
  auto* V = (const bf16*)v;
  auto* dO = (const bf16*)dout_bf16;
  const bool saved = o && saved_lse;
  if (saved) {  // the forward's statistics: only δ is left to compute
    const int64_t rows = B * T * H;
    k_row_dot<<<(unsigned)((rows * 32 + 255) / 256), 256, 0, ctx()->stream>>>(dout, o, delta, rows, T, (int)H, (int)Dv);
    KERNEL_CHECK();
  }
#define MMA_BACKWARD(a, b)                                                                              \
  if (Dh == a && Dv == b) {                                                                             \
    if (!saved)                                                                                         \
      if (mla_status e = forward<a, b>(Q, K, V, nullptr, dout, lse, delta, p)) return e;                \
    return backward<a, b>(Q, K, V, dO, saved ? saved_lse : lse, delta, dq, dk, dv, p);                  \
  }
  MMA_DIMS(MMA_BACKWARD)
#undef MMA_BACKWARD
  return MLA_FAIL(MLA_ERR_INTERNAL, "attention_mma_backward: unsupported head dims " + std::to_string(Dh) + "/" + std::to_string(Dv));
}
}  // namespace mla
