// MLA decode over bf16 latent caches in one fused kernel: the FlashDecoding / FlashMLA idea written
// with mma.sync. The cuBLAS route (decode_batch.cu) runs the scores and the weighted sum as two skinny
// GEMMs per sequence, reading every cached latent row twice at ~27% of the HBM bound (llama2-7b,
// 16k context); here each block streams a run of latent rows through shared memory once and uses each
// row for both products of 16 query heads.
//
// Per block: one sequence, one block of HB = 16 query heads (one m16 tile; more heads take more
// blocks, which read the same rows, mostly from L2), one split of the sequence's visible keys.
// Tiles of TN = 16 cached rows pass through a ring of shared-memory stages (bulk copies). Per tile:
//   scores  S[16 heads × 16 keys] = Qc·Cᵀ (tensor cores; each warp a slice of the latent dims, its
//           query fragments held in registers) + Qr·Krᵀ (tensor cores too: a block-diagonal rope
//           query in shared memory, its k16 steps continuing the latent ones round the warps);
//   softmax online, in the log2 domain, the probabilities rounded to bf16 (the weighted sum reads
//           them so) and the row sum l accumulated from the rounded values;
//   output  O[16 × L] += P·C (tensor cores; each warp owns L / warps columns in registers).
// A sequence split in several parts writes float32 partial outputs (already divided by their l) and
// their log2-sum-exp; a second kernel merges them. The design, and FlashMLA's that it follows, are in
// docs/latent-decode-design.md.
//
// Shapes: qc [B, H, L], qr [B, H, Dr] float32; per sequence b a latent cache c_b [≥ pos_b + 1, L] and
// a rope key cache kr_b [≥ pos_b + 1, Hkv, Dr], both bf16; o [B, H, L] float32. Query head h reads rope
// group h / (H / Hkv). L = 8·NT·warps for NT in {1, 2, 4, 8, 16} and ≤ 16 warps (48, 96, 256, 512,
// 1024, 2048, …; other widths take the cuBLAS route); Dr even, ≤ 64; Hkv·Dr a multiple of 8.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>
#include "common.cuh"
#include "mma.cuh"
#include "decode_split.cuh"
#include "latent_common.cuh"

using mla::ctx;

namespace {
constexpr int MAX_WARPS = 16;
constexpr int MAX_DR = 64;
// How the stages are filled (MHA2MLA_LATENT_COPY), measured per call at llama2-7b's latent
// (docs/benchmarks.md, nineteenth session):
//   bulk (COPY_SPREAD, the default): once every warp is done with a stage, each warp issues the bulk
//        copies of its own rows. ncu put 31% of the warps' stall samples at the score barrier, waiting
//        for the one warp that issued all 32 copies of a tile (one ELECT loop turn per copy). 5–10%
//        faster per call than early;
//   early: warp 0 issues them all once every warp is done with the stage; 4–5% faster than barrier;
//   barrier: warp 0 issues them at the next tile's score barrier (the eighteenth session's kernel);
//   async: 16-byte cp.async copies from every thread.
enum CopyMode { COPY_BARRIER = 0, COPY_ASYNC = 1, COPY_EARLY = 2, COPY_SPREAD = 3 };
// Spread gives each warp two lanes per row it brings: 2 · ⌈TN / warps⌉ ≤ 32.
static_assert(TN == 16 && MAX_WARPS <= TN, "the spread copy mode's lanes per warp");
// Floats between two warps' partial scores ([HB][TN] each): 16 more than the 256 they hold, so the
// softmax's lane pair (2n, 2n + 1), which reads warps w and w + 1, meets two banks, not one.
constexpr int PART_STRIDE = HB * TN + 16;
// Timing experiments only, never a default: built with -DMLA_LATENT_DIAG=1 the kernel skips its math
// (scores, softmax, weighted sum) and keeps the copies and barriers; with 2 it skips the copies. What
// each leaves is the time of the other part (bench/build-cuda-ab.sh with NVCC_EXTRA=-DMLA_LATENT_DIAG=N;
// docs/benchmarks.md, twenty-seventh session).
#ifndef MLA_LATENT_DIAG
#define MLA_LATENT_DIAG 0
#endif
constexpr bool DIAG_NO_MATH = MLA_LATENT_DIAG == 1, DIAG_NO_COPY = MLA_LATENT_DIAG == 2;

struct Layout {
  int L, ldc, ropeStride, Dr, stages;
  int ropeK;  // columns of the block-diagonal rope query: the widest rope span a head block loads, rounded up to 16
  __host__ __device__ size_t latentBytes() const { return (size_t)TN * ldc * 2; }
  __host__ __device__ size_t ropeBytes() const { return ((size_t)TN * ropeStride * 2 + 15) & ~size_t(15); }
  __host__ __device__ size_t stageBytes() const { return latentBytes() + ropeBytes(); }
  __host__ __device__ size_t partOffset() const { return stageBytes() * stages; }
  __host__ __device__ size_t qrOffset() const { return partOffset() + (size_t)MAX_WARPS * PART_STRIDE * 4; }
  __host__ __device__ int ldq() const { return ropeK + PAD; }
  __host__ __device__ size_t probsOffset() const { return qrOffset() + ((size_t)HB * ldq() * 2 + 15 & ~size_t(15)); }
  __host__ __device__ size_t statsOffset() const { return probsOffset() + (size_t)HB * (TN + PAD) * 2; }
  __host__ __device__ size_t barOffset() const { return (statsOffset() + 3 * HB * 4 + 7) & ~size_t(7); }
  // Per stage two barriers: full (the copies landed) and empty (every warp is past its weighted sum).
  __host__ __device__ size_t bytes() const { return barOffset() + (size_t)stages * 16; }
};

// Grid: x = head block + head blocks · split, y = sequence. NT n8 output tiles per warp: L = 8·NT·warps.
// Per tile two block barriers: after the scores (partials visible; every warp is also past the weighted
// sum of the tile before, whose stage the barrier copy mode then refills) and after the softmax. The
// other bulk modes refill a stage sooner, once every warp has arrived on its empty barrier.
template <int NT>
__global__ void __launch_bounds__(32 * MAX_WARPS, 1)
k_latent_decode(const Seq* seqs, const int32_t* pos, int64_t window, const float* qc, const float* qr, int H, int Hkv, float scale2, Layout lay, int gridSplits, int minTiles, int copyMode, OutRows o, float* opart, float* lsepart) {
  const bool asyncCopy = copyMode == COPY_ASYNC, spread = copyMode == COPY_SPREAD;
  const bool early = copyMode == COPY_EARLY || spread;  // refilled once every warp is past its weighted sum
  constexpr int KQ = NT >= 2 ? NT / 2 : 1;  // latent k16 steps of the scores per warp
  extern __shared__ __align__(16) unsigned char smem[];
  const int L = lay.L, Dr = lay.Dr, ldc = lay.ldc, ldq = lay.ldq();
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = H / Hkv;
  BlockShare share;
  if (!block_share(share, seqs, pos, window, H, Hkv, Dr, gridSplits, minTiles)) return;
  const int b = blockIdx.y;
  const int ropeCols = share.span.count * Dr;             // rope columns this block copies per cached row
  const int ksteps = L / 16, rsteps = (ropeCols + 15) / 16;  // latent and rope k16 steps of the scores

  float* sPart = (float*)(smem + lay.partOffset());  // [warps][HB][TN] partial scores, PART_STRIDE apart
  bf16* sQr = (bf16*)(smem + lay.qrOffset());        // [HB][ldq] block-diagonal rope query
  bf16* sP = (bf16*)(smem + lay.probsOffset());      // [HB][TN + PAD]
  float* sAlpha = (float*)(smem + lay.statsOffset());
  float* sM = sAlpha + HB;
  float* sL = sM + HB;
  uint64_t* bars = (uint64_t*)(smem + lay.barOffset());
  uint64_t* empties = bars + lay.stages;
  // A stage's full barrier: one arrival per warp with the bytes of its bulk copies (spread), one with
  // those of warp 0's (early, barrier), or (asyncCopy) one per thread when its 16-byte copies land; its
  // empty barrier: one arrival per warp done with the stage.
  if (threadIdx.x < lay.stages) {
    bar_init(bars + threadIdx.x, asyncCopy ? blockDim.x : spread ? warps : 1);
    bar_init(empties + threadIdx.x, warps);
  }
  // The rope scores as one more product: row r holds head h0 + r's rope query at its group's columns
  // of the copied span and zeros elsewhere, so Qr·Krᵀ runs on the tensor cores beside Qc·Cᵀ.
  for (int i = threadIdx.x; i < HB * lay.ropeK; i += blockDim.x) {
    const int r = i / lay.ropeK, k = i % lay.ropeK, d = k - ((share.h0 + r) / group - share.span.first) * Dr;
    sQr[r * ldq + k] = __float2bfloat16(r < share.nh && d >= 0 && d < Dr ? qr[((int64_t)b * H + share.h0 + r) * Dr + d] : 0.f);
  }
  // Rope columns past the copied span up to the last k16 step are read by the product: zero them
  // once in every stage (no copy writes them).
  for (int i = threadIdx.x; i < lay.stages * TN * (rsteps * 16 - ropeCols); i += blockDim.x) {
    const int w = rsteps * 16 - ropeCols, st = i / (TN * w), row = i / w % TN;
    bf16* sR = (bf16*)(smem + (size_t)st * lay.stageBytes() + lay.latentBytes());
    sR[row * lay.ropeStride + ropeCols + i % w] = __float2bfloat16(0.f);
  }
  if (threadIdx.x < HB) {
    sM[threadIdx.x] = -INFINITY;
    sL[threadIdx.x] = 0.f;
  }
  // This warp's query fragments for latent k16 steps warp, warp + warps, … (A layout of m16n8k16).
  const int g = lane >> 2, t4 = lane & 3;
  uint32_t qf[KQ][4];
#pragma unroll
  for (int j = 0; j < KQ; j++) {
    const int ks = warp + j * warps;
    const int k0 = ks * 16 + 2 * t4;
    auto at = [&](int r, int k) -> float2 {
      return ks < ksteps && r < share.nh ? *reinterpret_cast<const float2*>(qc + ((int64_t)b * H + share.h0 + r) * L + k) : make_float2(0.f, 0.f);
    };
    const float2 a0 = at(g, k0), a1 = at(g + 8, k0), a2 = at(g, k0 + 8), a3 = at(g + 8, k0 + 8);
    qf[j][0] = pack(a0.x, a0.y);
    qf[j][1] = pack(a1.x, a1.y);
    qf[j][2] = pack(a2.x, a2.y);
    qf[j][3] = pack(a3.x, a3.y);
  }
  // The rope steps continue the latent ones round the warps: this warp's first is the first
  // step ≥ ksteps congruent to it.
  int rs0 = warp;
  while (rs0 < ksteps) rs0 += warps;
  const int qwarps = min(warps, ksteps + rsteps);  // warps with partial scores

  MLA_SM90_ONLY(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");)
  MLA_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");)
  __syncthreads();
  // Tile `it` into its stage: one bulk copy per cached row and one per its rope span, issued by every
  // warp for its own rows (spread) or by warp 0 (lane i: latent row i, lane 16 + i: its rope span); the
  // rows past the sequence's end are zeroed instead (they meet probability 0, and stale shared memory
  // could hold NaN, which 0 would not cancel).
  const unsigned latentRow = (unsigned)L * 2, ropeRow = (unsigned)ropeCols * 2;
  // TN rows of `chunks` 16-byte chunks from src (row stride srcStride elements) to dst (row stride
  // ld), the block's threads taking chunks in turn; rows ≥ valid are zero-filled.
  auto copy_rows = [&](bf16* dst, int ld, const bf16* src, int64_t srcStride, int chunks, int valid) {
    int r = threadIdx.x / chunks, c = threadIdx.x % chunks;
    const int dr = blockDim.x / chunks, dc = blockDim.x % chunks;
    for (; r < TN; r += dr, c += dc) {
      if (c >= chunks) c -= chunks, r++;
      if (r >= TN) break;
      cp16(dst + r * ld + c * 8, src + (r < valid ? r : 0) * srcStride + c * 8, r < valid);
    }
  };
  // Tile `it` into stage `stage` (it mod stages, which the caller tracks without a division).
  auto load = [&](int it, int stage) {
    if (it >= share.ntiles) return;
    unsigned char* st = smem + (size_t)stage * lay.stageBytes();
    bf16* sC = (bf16*)st;
    bf16* sR = (bf16*)(st + lay.latentBytes());
    const int64_t first = share.sq.lo + (share.t_begin + it) * TN, end = share.sq.lo + share.sq.n;
    const int valid = (int)(end - first < TN ? end - first : TN);
    if (asyncCopy) {
      // Every thread copies 16-byte chunks (rows past the end read as zeros); no bulk copies, whose
      // issue from one warp, 32 per tile, may be what a tile waits on (docs/latent-decode-design.md).
      copy_rows(sC, ldc, share.sq.c + first * L, L, L / 8, valid);
      if (ropeCols) copy_rows(sR, lay.ropeStride, share.sq.kr + (first * Hkv + share.span.first) * Dr, Hkv * Dr, ropeCols / 8, valid);
      bar_arrive_copies(bars + stage);
      return;
    }
    if (spread) {
      // Warp w brings rows w, w + warps, … (lane 2j: the latent row of its j-th, lane 2j + 1: its rope
      // span), zeroes those past the end, and arrives expecting its copies' bytes.
      uint64_t* bar = bars + stage;
      unsigned bytes = 0;
      for (int r = warp; r < TN; r += warps) {
        if (r < valid) {
          if (!DIAG_NO_COPY) bytes += latentRow + ropeRow;
          continue;
        }
        for (int e = lane; e < L / 8; e += 32) *reinterpret_cast<int4*>(sC + r * ldc + e * 8) = make_int4(0, 0, 0, 0);
        for (int e = lane; e < ropeCols; e += 32) sR[r * lay.ropeStride + e] = __float2bfloat16(0.f);
      }
      __threadfence_block();
      __syncwarp();
      if (lane == 0) bar_expect(bar, bytes);
      __syncwarp();
      const int r = warp + (lane >> 1) * warps;
      if (r < valid && !DIAG_NO_COPY) {
        if (!(lane & 1)) bulk_copy(sC + r * ldc, share.sq.c + (first + r) * L, latentRow, bar);
        else if (ropeRow) bulk_copy(sR + r * lay.ropeStride, share.sq.kr + ((first + r) * Hkv + share.span.first) * Dr, ropeRow, bar);
      }
      return;
    }
    if (early && valid < TN) {
      // Only warp 0 refills in this mode: it zeroes the rows past the end before its arrival, which
      // publishes them with the copies.
      const int chunks = L / 8;
      for (int e = lane; e < (TN - valid) * chunks; e += 32) *reinterpret_cast<int4*>(sC + (valid + e / chunks) * ldc + (e % chunks) * 8) = make_int4(0, 0, 0, 0);
      for (int e = lane; e < (TN - valid) * ropeCols; e += 32) sR[(valid + e / ropeCols) * lay.ropeStride + e % ropeCols] = __float2bfloat16(0.f);
      __threadfence_block();
      __syncwarp();
    }
    if (warp == 0) {
      uint64_t* bar = bars + stage;
      if (lane == 0) bar_expect(bar, (unsigned)valid * (latentRow + ropeRow));
      __syncwarp();
      const int i = lane & 15;
      if (i < valid) {
        if (lane < 16) bulk_copy(sC + i * ldc, share.sq.c + (first + i) * L, latentRow, bar);
        else if (ropeRow) bulk_copy(sR + i * lay.ropeStride, share.sq.kr + ((first + i) * Hkv + share.span.first) * Dr, ropeRow, bar);
      }
    }
    if (!early && valid < TN) {
      const int chunks = L / 8;
      for (int e = threadIdx.x; e < (TN - valid) * chunks; e += blockDim.x) *reinterpret_cast<int4*>(sC + (valid + e / chunks) * ldc + (e % chunks) * 8) = make_int4(0, 0, 0, 0);
      for (int e = threadIdx.x; e < (TN - valid) * ropeCols; e += blockDim.x) sR[(valid + e / ropeCols) * lay.ropeStride + e % ropeCols] = __float2bfloat16(0.f);
    }
  };
  // Early refill fills every stage now; otherwise one stays free for the copy issued at tile 0's barrier.
  if (early) {
    if (warp == 0 || spread)
      for (int s = 0; s < lay.stages; s++) load(s, s);
  } else {
    for (int s = 0; s < lay.stages - 1; s++) load(s, s);
  }
  __syncthreads();  // the zeroed rows of a short first tile are visible

  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  const int n0 = warp * NT * 8;  // this warp's output columns
  // Shared-memory byte addresses of this lane's ldmatrix rows, fixed for the kernel, so the loops add
  // only a stage base and compile-time steps (ncu counted ~240 integer instructions per warp per tile
  // when each k16 step recomputed them; docs/latent-decode-design.md):
  //   scoreOff: the latent B fragment (keys as rows) of this warp's first k16 step, kStep bytes to the
  //   next; ropeOff: the rope B fragment, relative to the stage's rope rows; qrAddr: the rope query's A
  //   fragment; pvOff: the weighted sum's B fragment (rows over the keys) at this warp's columns;
  //   pAddr: the probabilities' A fragment.
  const unsigned smemAddr = (unsigned)__cvta_generic_to_shared(smem);
  const unsigned stageBytes = (unsigned)lay.stageBytes(), latentBytes = (unsigned)lay.latentBytes();
  const int nkRow = (lane & 7) + (lane >> 4) * 8, nkCol = ((lane >> 3) & 1) * 8;
  const unsigned scoreOff = (unsigned)((nkRow * ldc + nkCol + warp * 16) * 2), kStep = (unsigned)warps * 32;
  const unsigned ropeOff = latentBytes + (unsigned)((nkRow * lay.ropeStride + nkCol) * 2);
  const unsigned qrAddr = (unsigned)__cvta_generic_to_shared(sQr) + (unsigned)(((lane & 15) * ldq + (lane >> 4) * 8) * 2);
  const unsigned pvOff = NT == 1 ? (unsigned)(((lane & 15) * ldc + n0) * 2)
                                 : (unsigned)((((lane & 7) + ((lane >> 3) & 1) * 8) * ldc + n0 + (lane >> 4) * 8) * 2);
  const unsigned pAddr = (unsigned)__cvta_generic_to_shared(sP) + (unsigned)(((lane & 15) * (TN + PAD) + (lane >> 4) * 8) * 2);
  float* const partLo = sPart + warp * PART_STRIDE + g * TN + 2 * t4;  // this lane's partial scores, rows g and g + 8
  int stage = 0;        // it mod stages
  unsigned phase = 0;   // (it / stages) mod 2: the parity of the stage's barriers at this tile

  for (int it = 0; it < share.ntiles; it++) {
    bar_wait(bars + stage, phase);
    const unsigned stageAddr = smemAddr + (unsigned)stage * stageBytes;

    // Partial scores of this warp's latent slice and rope steps. With NT ≥ 2 every warp has KQ latent
    // steps (L / 16 = KQ · warps); with NT = 1 only the first half of the warps has one. Both rely on
    // the launch's L / (8 · NT) warps, as the output columns n0 do.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    if (!DIAG_NO_MATH) {
    unsigned ka = stageAddr + scoreOff;
#pragma unroll
    for (int j = 0; j < KQ; j++, ka += kStep) {
      if (NT >= 2 || warp < ksteps) {
        uint32_t bf[4];
        ldsm4<false>(bf, ka);
        mma(s[0], qf[j], bf[0], bf[1]);
        mma(s[1], qf[j], bf[2], bf[3]);
      }
    }
    for (int ks = rs0; ks < ksteps + rsteps; ks += warps) {
      uint32_t qa[4], bf[4];
      const unsigned kk = (unsigned)(ks - ksteps) * 32;
      ldsm4<false>(qa, qrAddr + kk);
      ldsm4<false>(bf, stageAddr + ropeOff + kk);
      mma(s[0], qa, bf[0], bf[1]);
      mma(s[1], qa, bf[2], bf[3]);
    }
    }
    if (warp < qwarps) {
#pragma unroll
      for (int nt = 0; nt < 2; nt++) {
        *reinterpret_cast<float2*>(partLo + nt * 8) = make_float2(s[nt][0], s[nt][1]);
        *reinterpret_cast<float2*>(partLo + 8 * TN + nt * 8) = make_float2(s[nt][2], s[nt][3]);
      }
    }
    __syncthreads();
    // Every warp is past the weighted sum of tile it − 1: its stage takes tile it + stages − 1.
    if (!early) load(it + lay.stages - 1, stage == 0 ? lay.stages - 1 : stage - 1);

    // Online softmax, one head row per warp pass: lane pair (2n, 2n + 1) sums the partials of key n
    // (even and odd warps), the row's max and sum reduce over the other four lane bits.
    for (int i = threadIdx.x; i < (DIAG_NO_MATH ? 0 : 2 * HB * TN); i += blockDim.x) {
      const int e = i >> 1, half = i & 1, r = e / TN, n = e % TN;
      const float* pr = sPart + r * TN + n;
      float x0 = 0.f, x1 = 0.f;
      int w = half;
      for (; w + 2 < qwarps; w += 4) {  // two independent sums: the loads overlap
        x0 += pr[w * PART_STRIDE];
        x1 += pr[(w + 2) * PART_STRIDE];
      }
      if (w < qwarps) x0 += pr[w * PART_STRIDE];
      float x = x0 + x1;
      x += __shfl_xor_sync(0xffffffffu, x, 1);
      const bool visible = (share.t_begin + it) * TN + n < share.sq.n;
      x = visible ? x * scale2 : -INFINITY;
      float mt = x;
#pragma unroll
      for (int off = 16; off > 1; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
      const float m_old = sM[r], m_new = fmaxf(m_old, mt);  // finite: a tile's first key is visible
      const bf16 pb = __float2bfloat16(ex2(x - m_new));
      float ps = __bfloat162float(pb);
      if (!half) sP[r * (TN + PAD) + n] = pb;
#pragma unroll
      for (int off = 16; off > 1; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
      __syncwarp();
      if (lane == 0) {
        const float alpha = ex2(m_old - m_new);
        sAlpha[r] = alpha;
        sM[r] = m_new;
        sL[r] = sL[r] * alpha + ps;
      }
    }
    __syncthreads();

    // O = α·O + P·C over this warp's columns (the rescale skipped while no row's max moved).
    const float a_lo = sAlpha[g], a_hi = sAlpha[g + 8];
    uint32_t pa[4];
    ldsm4<false>(pa, pAddr);
    rescale_rows(acc, a_lo, a_hi);
    const unsigned va = stageAddr + pvOff;
    if (DIAG_NO_MATH) {
    } else if (NT == 1) {
      uint32_t bf[2];
      ldsm2t(bf, va);
      mma(acc[0], pa, bf[0], bf[1]);
    } else {
#pragma unroll
      for (int nt = 0; nt < NT; nt += 2) {
        uint32_t bf[4];
        ldsm4<true>(bf, va + nt * 16);
        mma(acc[nt], pa, bf[0], bf[1]);
        mma(acc[nt + 1], pa, bf[2], bf[3]);
      }
    }
    if (early) {
      // This warp is done with the stage. Once every warp is, it is refilled (by every warp, its own
      // rows, or by warp 0 alone), so the next copy is in flight through the next tile's scores too
      // (the barrier path issues it only after them).
      __syncwarp();
      uint64_t* empty = empties + stage;
      if (lane == 0) bar_arrive(empty);
      if ((warp == 0 || spread) && it + lay.stages < share.ntiles) {
        bar_wait(empty, phase);
        load(it + lay.stages, stage);
      }
    }
    if (++stage == lay.stages) {
      stage = 0;
      phase ^= 1;
    }
  }
  __syncthreads();

  write_output(acc, sL[g], sL[g + 8], share, o, opart, H, L, n0, g, t4);
  if (share.nsplit > 1 && threadIdx.x < share.nh) {
    const float l = sL[threadIdx.x];
    lsepart[((int64_t)share.split * gridDim.y + b) * H + share.h0 + threadIdx.x] = l > 0.f ? sM[threadIdx.x] + log2f(l) : -INFINITY;
  }
}

// n8 output tiles per warp for a latent width: the fewest that keep the warps ≤ 16 (0: not taken).
int tiles_per_warp(int64_t L) {
  if (L <= 0 || L % 16) return 0;
  for (int nt : {1, 2, 4, 8, 16})
    if (L % (8 * nt) == 0 && L / (8 * nt) <= MAX_WARPS) return nt;
  return 0;
}

// How the kernel fills its stages (MHA2MLA_LATENT_COPY, CopyMode): "bulk" (default), "early", "barrier"
// or "async". Read once per process.
int latent_copy_mode() {
  static const int a = [] {
    const char* v = getenv("MHA2MLA_LATENT_COPY");
    const std::string s = v ? v : "";
    return s == "async" ? COPY_ASYNC : s == "barrier" ? COPY_BARRIER : s == "early" ? COPY_EARLY : COPY_SPREAD;
  }();
  return a;
}

// The shared-memory plan: as many stages (2–4) as fit in 200 KB; stages 0 when even two do not fit.
Layout plan(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  // Rope rows padded by 16 bytes (ldmatrix rows in distinct banks); they hold the widest span a head
  // block copies, rounded up to the product's k16 steps (Hkv·Dr is a multiple of 8, so + 8 covers it).
  int ropeK = 0;
  for (int hb = 0; hb * HB < H; hb++) ropeK = std::max(ropeK, (rope_span(hb, (int)H, (int)Hkv, (int)Dr).count * (int)Dr + 15) / 16 * 16);
  Layout lay{(int)L, (int)L + PAD, (int)(Hkv * Dr + 8), (int)Dr, 4, ropeK};
  const size_t limit = (size_t)smem_optin();
  while (lay.stages > 2 && lay.bytes() > std::min<size_t>(200 * 1024, limit)) lay.stages--;
  if (lay.bytes() > limit) lay.stages = 0;
  return lay;
}

// Whether this GPU and the kernel take the widths: a tile split of L, Dr even ≤ 64, rope rows of a
// 16-byte multiple (bulk copies move those), a shared-memory plan that fits.
bool shape_fits(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  return sm90() && tiles_per_warp(L) > 0 && Hkv > 0 && H > 0 && H % Hkv == 0 && Dr >= 0 && Dr <= MAX_DR && Dr % 2 == 0 && (Hkv * Dr) % 8 == 0 && plan(L, H, Hkv, Dr).stages > 0;
}
}  // namespace

namespace mla {
bool latent_decode_takes(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  const char* route = getenv("MHA2MLA_LATENT_DECODE");
  if (route && std::string(route) == "gemm") return false;
  return shape_fits(L, H, Hkv, Dr) || latent_decode_roles_takes(L, H, Hkv, Dr);
}

// Which kernel a call takes: the one with the warps split by role where it fits (measured faster at
// llama2-7b's latent: docs/benchmarks.md, twenty-eighth session), unless MHA2MLA_LATENT_KERNEL=tiles.
// Read per call, so a test can run both; a recorded decode graph keeps the kernel it was recorded with.
static bool roles_kernel(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  const char* v = getenv("MHA2MLA_LATENT_KERNEL");
  if (v && std::string(v) == "tiles" && shape_fits(L, H, Hkv, Dr)) return false;
  return latent_decode_roles_takes(L, H, Hkv, Dr);
}

mla_status latent_decode(const __nv_bfloat16* const* cs, const __nv_bfloat16* const* krs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* qc, const float* qr, void* o, bool obf16, int64_t B, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale) {
  if (roles_kernel(L, H, Hkv, Dr)) return latent_decode_roles(cs, krs, lo, n, pos, window, qc, qr, o, obf16, B, H, Hkv, Dr, L, scale);
  const int nt = tiles_per_warp(L);
  const Layout lay = plan(L, H, Hkv, Dr);
  int copyMode = latent_copy_mode();
  MLA_CHECK(shape_fits(L, H, Hkv, Dr) && B > 0 && B <= 65535, "latent_decode: L = 8·NT·warps (NT 1–16, ≤ 16 warps), Hkv dividing H, Hkv·Dr a multiple of 8, a shared-memory plan that fits, 1 ≤ B ≤ 65,535");
  const void* fn = nt == 1 ? (const void*)k_latent_decode<1> : nt == 2 ? (const void*)k_latent_decode<2> : nt == 4 ? (const void*)k_latent_decode<4> : nt == 8 ? (const void*)k_latent_decode<8> : (const void*)k_latent_decode<16>;
  const int threads = 32 * (int)(L / (8 * nt));
  // Per instantiation, once: the shared-memory opt-in, and blocks per SM for the last plan size seen.
  static bool configured[17] = {};
  static size_t occupancyBytes[17] = {};
  static int perSm[17] = {};
  if (!configured[nt]) {
    CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin()));
    configured[nt] = true;
  }
  if (occupancyBytes[nt] != lay.bytes()) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm[nt], fn, threads, lay.bytes()) != cudaSuccess || perSm[nt] < 1) perSm[nt] = 1;
    occupancyBytes[nt] = lay.bytes();
  }
  // Splits along the context: at most enough blocks for one wave over the SMs (cap), each split ≥ 8 (4 at batch 1)
  // tiles unless MHA2MLA_DECODE_MIN_TILES says otherwise (splits_of). An eager call's grid has the splits its longest sequence takes; a decode graph's
  // has the cap, since its sequences grow while it lives (blocks past a sequence's splits exit).
  const int64_t hbn = (H + HB - 1) / HB;
  const int64_t wave = (int64_t)sm_count() * perSm[nt];
  const int cap = (int)std::min<int64_t>(std::max<int64_t>(1, wave / (B * hbn)), 1 << 16);
  SplitCall sc;
  if (mla_status e = split_call(sc, cs, krs, lo, n, pos, B, H, L, cap, B == 1 ? MIN_TILES_PER_SPLIT_LATENT_B1 : MIN_TILES_PER_SPLIT)) return e;
  // The kernel's arguments, in its parameter order and types, for the instantiation `fn` picked.
  int h32 = (int)H, hkv32 = (int)Hkv;
  float scale2 = scale * LOG2E;
  Layout layArg = lay;
  OutRows out{o, obf16};
  void* args[] = {(void*)&sc.seqs, (void*)&sc.pos, &window, (void*)&qc, (void*)&qr, &h32, &hkv32, &scale2, &layArg, &sc.splits, &sc.minTiles, &copyMode, &out, &sc.opart, &sc.lsepart};
  CUDA_TRY(cudaLaunchKernel(fn, dim3((unsigned)(hbn * sc.splits), (unsigned)B), dim3((unsigned)threads), args, lay.bytes(), ctx()->stream));
  return split_merge(sc, window, out, B, H, L);
}
}  // namespace mla
