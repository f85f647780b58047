// MLA decode straight from int8 latent caches (`--kv-cache int8`): the kernel by role
// (latent_decode_roles.cu) reading the quantized rows of kv_quant.cuh, where each decode step used to
// dequantize every visible row into a bf16 buffer for it (the int8 bytes, then twice a bf16 cache's:
// 2.5× what a bf16 cache reads at 16k × 8). What differs from the bf16 kernel:
//  - stages hold whole quantized rows (the values, then one bf16 scale per 32): 2,192 bytes for a
//    2,048-wide latent row against 4,112, so four 16-key stages fit where three bf16 ones do; the rope
//    rows are whole too, the same in both blocks of a pair (one multicast copy each).
//  - the tensor cores take fp16, because an int8 value is exact in fp16 and two of them convert with a
//    byte permute, one bit op and one subtraction (1024 + u under fp16's exponent of 1024, u = q + 128);
//    bf16 holds the integers too but has no such trick. Scores: the query times 2^-6 (fp16's range) in
//    fp16 against the integers, each group of 32 dims (two k16 steps) summed apart and multiplied by its
//    keys' scales in float32. A lane's B fragment of a key is four consecutive bytes (dims 4·t4 … 4·t4+3
//    of the k16 step: a permutation of the fragment's k slots that the query fragments follow).
//    Weighted sum: A = P·2^4 times each key's scale of the columns' group (float32, then fp16), B the
//    integers. A lane's B fragments of four n8 tiles come from four consecutive columns of four keys,
//    so output column 32m + 8·t4 + j (row g) sits in tile 4m + j, slot 0, and 32m + 8·t4 + 4 + j in slot 1.
//  - the rope scores read the integers and their scales in float32.
// Against the reference on the dequantized values (q · scale in float32) the scores lose only the
// query's fp16 rounding and the weighted sum P·scale's, where the dequantizing route rounded every
// cached value and the probabilities to bf16. Ranges: a cached group's scale up to 4,094 (absmax
// ~520,000) and query values up to 4·10^6 stay finite.
//
// Shapes: L = 64·NT for NT in {4, 8, 16, 32}, Hkv dividing H, Dr a multiple of 4 up to 64, at least
// three stages fitting the block's shared memory (latent_decode_q8_takes); the rest dequantize.
#include <algorithm>
#include <cmath>
#include <string>
#include <cuda_fp16.h>
#include "common.cuh"
#include "mma.cuh"
#include "decode_split.cuh"
#include "latent_common.cuh"
#include "kv_quant.cuh"

namespace {
constexpr int Q8_SCORE_WARPS = 4, Q8_SUM_WARPS = 8, Q8_THREADS = 32 * (Q8_SCORE_WARPS + Q8_SUM_WARPS);
constexpr int Q8_MAX_STAGES = 6, Q8_MAX_DR = 64, Q8_PBUF = 2;
// Floats a head's probabilities take in a buffer: 16 and 8 of padding, so the weighted sum's 64-bit
// reads (rows g, keys 2·t4) of a half warp meet 16 different bank pairs.
constexpr int Q8_PSTRIDE = TN + 8;
constexpr int Q8_PART_STRIDE = HB * TN + 16;
constexpr float Q8_QUERY_SCALE = 1.f / 64, Q8_PROB_SCALE = 16.f;
static_assert(TN == 16 && 2 * Q8_SUM_WARPS == TN && Q8_SCORE_WARPS * 4 == HB, "the role split of latent_decode_roles.cu");

// A shared row stride ≥ bytes with stride % 128 == 16: eight rows' same word fall four banks apart, so a
// lane's 4-byte read of key g (scores) or of key 2·t4 (weighted sum) meets no other lane's bank.
__host__ __device__ inline int bank_stride(int bytes) { return bytes + (16 - bytes % 128 + 128) % 128; }

struct Q8Layout {
  int L, Dr, stages;
  int rowBytes, ldq;        // a latent row (kv_row_bytes) and its stride in a stage
  int ropeRowBytes, ldr;    // a rope row [Hkv·Dr] and its stride (0 without rope)
  int ropeScales;           // offset of a rope row's scales
  __host__ __device__ size_t latentBytes() const { return (size_t)TN * ldq; }
  __host__ __device__ size_t stageBytes() const { return latentBytes() + (size_t)TN * ldr; }
  __host__ __device__ size_t partOffset() const { return stageBytes() * stages; }
  __host__ __device__ size_t qrOffset() const { return partOffset() + (size_t)Q8_SCORE_WARPS * Q8_PART_STRIDE * 4; }
  __host__ __device__ size_t probsOffset() const { return qrOffset() + (((size_t)HB * Dr * 4 + 15) & ~size_t(15)); }
  __host__ __device__ size_t alphaOffset() const { return probsOffset() + (size_t)Q8_PBUF * HB * Q8_PSTRIDE * 4; }
  __host__ __device__ size_t statsOffset() const { return alphaOffset() + (size_t)Q8_PBUF * HB * 4; }
  __host__ __device__ size_t barOffset() const { return (statsOffset() + 2 * HB * 4 + 7) & ~size_t(7); }
  __host__ __device__ size_t bytes() const { return barOffset() + (size_t)(2 * Q8_MAX_STAGES + 2 * Q8_PBUF) * 8; }
};

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// Two int8 (bytes 0 and 2 of t, two's complement) as an fp16 pair, exactly: u = q + 128 (the top bit
// flipped) in fp16 1024's mantissa is 1024 + u, and 1024 + u − 1152 = q.
__device__ __forceinline__ uint32_t i8pair_to_h2(uint32_t t) {
  const uint32_t biased = (t & 0x00ff00ffu) ^ 0x64806480u;
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&biased), __half2half2(__ushort_as_half((unsigned short)0x6480)));
  return *reinterpret_cast<const uint32_t*>(&h);
}
// Bytes 0–1 and 2–3 of v as two fp16 pairs.
__device__ __forceinline__ void i8x4_to_h2(uint32_t v, uint32_t& lo, uint32_t& hi) {
  lo = i8pair_to_h2(__byte_perm(v, 0, 0x0100));
  hi = i8pair_to_h2(__byte_perm(v, 0, 0x0302));
}
// Byte j of x and byte j of y as an fp16 pair.
__device__ __forceinline__ uint32_t i8_column_pair(uint32_t x, uint32_t y, int j) { return i8pair_to_h2(__byte_perm(x, y, (unsigned)(j | ((4 + j) << 8)))); }
// Byte i of v (int8) as a float, exactly: 2^23 + u − (2^23 + 128).
__device__ __forceinline__ float i8_to_f(uint32_t v, int i) { return __uint_as_float(__byte_perm(v ^ 0x80808080u, 0x4B000000u, 0x7650u | (unsigned)i)) - 8388736.f; }
__device__ __forceinline__ float scale_at(const unsigned char* p) { return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p)); }
// Shared-memory loads kept in program order (volatile): plain loads of a whole k loop's fragments were
// hoisted ahead of its MMAs, and with the query's 128 registers ptxas spilled ~230 bytes.
__device__ __forceinline__ uint32_t lds32(unsigned a) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(a));
  return v;
}
__device__ __forceinline__ float lds_scale(unsigned a) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(a));
  return __uint_as_float((uint32_t)v << 16);
}

// Grid and roles as k_latent_decode_roles's (x = head block + head blocks · split, y = sequence); cs and
// krs in Seq are the sequences' quantized latent and rope stores (bytes).
template <int NT, bool MC>
__global__ void __launch_bounds__(Q8_THREADS, 1)
k_latent_decode_q8(const Seq* seqs, const int32_t* pos, int64_t window, const float* qc, const float* qr, int H, int Hkv, float scale2, Q8Layout lay, int gridSplits, int minTiles, float* o, float* opart, float* lsepart) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int L = lay.L, Dr = lay.Dr, ldq = lay.ldq, stages = lay.stages;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  BlockShare share;
  if (!block_share(share, seqs, pos, window, H, Hkv, Dr, gridSplits, minTiles)) return;
  const int b = blockIdx.y;
  const unsigned char* cache = reinterpret_cast<const unsigned char*>(share.sq.c);
  const unsigned char* ropeCache = reinterpret_cast<const unsigned char*>(share.sq.kr);

  float* sPart = (float*)(smem + lay.partOffset());    // [SCORE_WARPS][HB][TN], Q8_PART_STRIDE apart
  float* sQr = (float*)(smem + lay.qrOffset());        // [HB][Dr]
  float* sP = (float*)(smem + lay.probsOffset());      // [PBUF][HB][Q8_PSTRIDE]: P · 2^4
  float* sAlpha = (float*)(smem + lay.alphaOffset());  // [PBUF][HB]
  float* sM = (float*)(smem + lay.statsOffset());
  float* sL = sM + HB;
  uint64_t* full = (uint64_t*)(smem + lay.barOffset());
  uint64_t* empty = full + Q8_MAX_STAGES;
  uint64_t* ready = empty + Q8_MAX_STAGES;
  uint64_t* freed = ready + Q8_PBUF;
  if (threadIdx.x < stages) {
    bar_init(full + threadIdx.x, Q8_SUM_WARPS);
    bar_init(empty + threadIdx.x, Q8_SUM_WARPS * (MC ? 2 : 1));
  }
  if (threadIdx.x < Q8_PBUF) {
    bar_init(ready + threadIdx.x, 32 * Q8_SCORE_WARPS);
    bar_init(freed + threadIdx.x, Q8_SUM_WARPS);
  }
  for (int i = threadIdx.x; i < HB * Dr; i += blockDim.x) sQr[i] = i / Dr < share.nh ? qr[((int64_t)b * H + share.h0) * Dr + i] : 0.f;
  MLA_SM90_ONLY(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");)
  MLA_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");)
  if (MC) cluster_sync_all();
  else __syncthreads();
  const unsigned rank = MC ? cluster_rank() : 0;
  const size_t stageBytes = lay.stageBytes();
  const unsigned smemAddr = (unsigned)__cvta_generic_to_shared(smem);
  int stage = 0;
  unsigned phase = 0;

  if (warp < Q8_SCORE_WARPS) {
    // This warp's query fragments, k16 steps warp·NT … warp·NT + NT − 1, slots in the B fragments' order:
    // (2t4, 2t4 + 1) ← dims 4t4, 4t4 + 1 and (2t4 + 8, 2t4 + 9) ← dims 4t4 + 2, 4t4 + 3 of the step.
    uint32_t qf[NT][4];
    // Each step's loads wait for the step before (a zero the compiler cannot see through): with more in
    // flight ptxas spilled ~200 bytes.
    int after = 0;
#pragma unroll
    for (int j = 0; j < NT; j++) {
      const int k0 = (warp * NT + j) * 16 + 4 * t4 + after;
      auto at = [&](int r) -> float4 {
        return r < share.nh ? *reinterpret_cast<const float4*>(qc + ((int64_t)b * H + share.h0 + r) * L + k0) : make_float4(0.f, 0.f, 0.f, 0.f);
      };
      const float4 lo = at(g), hi = at(g + 8);
      qf[j][0] = pack_h2(lo.x * Q8_QUERY_SCALE, lo.y * Q8_QUERY_SCALE);
      qf[j][1] = pack_h2(hi.x * Q8_QUERY_SCALE, hi.y * Q8_QUERY_SCALE);
      qf[j][2] = pack_h2(lo.z * Q8_QUERY_SCALE, lo.w * Q8_QUERY_SCALE);
      qf[j][3] = pack_h2(hi.z * Q8_QUERY_SCALE, hi.w * Q8_QUERY_SCALE);
      asm volatile("and.b32 %0, %1, 0;\n" : "=r"(after) : "r"(qf[j][3]));
    }
    // Keys g and 8 + g at this lane's dims (B), and the scales of keys 2t4, 2t4 + 1, 8 + 2t4, 9 + 2t4 (the
    // accumulator's columns) at this warp's groups.
    const int keyOff = g * ldq + warp * NT * 16 + 4 * t4;
    const int scaleOff = 2 * t4 * ldq + L + warp * NT;  // group warp·NT/2, two bytes a scale
    float* const partMine = sPart + warp * Q8_PART_STRIDE + g * TN + 2 * t4;
    const int r = warp * 4 + (lane >> 3), kp = lane & 7;
    const int rbase = r < share.nh ? ((share.h0 + r) / (H / Hkv)) * Dr : 0;  // head r's rope values in a rope row
    const float* qrow = sQr + r * Dr;
    const int visible = (int)(share.sq.n - share.t_begin * TN < (int64_t)share.ntiles * TN ? share.sq.n - share.t_begin * TN : (int64_t)share.ntiles * TN);
    float m = -INFINITY, l = 0.f;
    for (int it = 0; it < share.ntiles; it++) {
      bar_wait(full + stage, phase);
      const unsigned char* st = smem + (size_t)stage * stageBytes;
      const unsigned k0 = smemAddr + (unsigned)(stage * stageBytes) + keyOff, k1 = k0 + 8 * ldq;
      const unsigned sc = smemAddr + (unsigned)(stage * stageBytes) + scaleOff;
      float s[2][4] = {};
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        float tq[2][4] = {};
#pragma unroll
        for (int u = 0; u < 2; u++) {
          uint32_t b0, b1, c0, c1;
          i8x4_to_h2(lds32(k0 + (j + u) * 16), b0, b1);
          i8x4_to_h2(lds32(k1 + (j + u) * 16), c0, c1);
          mma<__half>(tq[0], qf[j + u], b0, b1);
          mma<__half>(tq[1], qf[j + u], c0, c1);
        }
        const unsigned sg = sc + j;  // group j / 2: 2 bytes on per group
        const float s0 = lds_scale(sg), s1 = lds_scale(sg + ldq), s8 = lds_scale(sg + 8 * ldq), s9 = lds_scale(sg + 9 * ldq);
        s[0][0] += tq[0][0] * s0, s[0][1] += tq[0][1] * s1, s[0][2] += tq[0][2] * s0, s[0][3] += tq[0][3] * s1;
        s[1][0] += tq[1][0] * s8, s[1][1] += tq[1][1] * s9, s[1][2] += tq[1][2] * s8, s[1][3] += tq[1][3] * s9;
      }
      warps_sync<Q8_SCORE_WARPS>();
#pragma unroll
      for (int nt = 0; nt < 2; nt++) {
        *reinterpret_cast<float2*>(partMine + nt * 8) = make_float2(s[nt][0], s[nt][1]);
        *reinterpret_cast<float2*>(partMine + 8 * TN + nt * 8) = make_float2(s[nt][2], s[nt][3]);
      }
      warps_sync<Q8_SCORE_WARPS>();
      const float* pr = sPart + r * TN + 2 * kp;
      float x0 = 0.f, x1 = 0.f;
#pragma unroll
      for (int w = 0; w < Q8_SCORE_WARPS; w++) {
        const float2 v = *reinterpret_cast<const float2*>(pr + w * Q8_PART_STRIDE);
        x0 += v.x;
        x1 += v.y;
      }
      x0 *= 1.f / Q8_QUERY_SCALE;
      x1 *= 1.f / Q8_QUERY_SCALE;
      // The rope part: keys 2kp and 2kp + 1, four values (one group: 4-aligned) a step.
      const unsigned char* r0 = st + lay.latentBytes() + 2 * kp * lay.ldr;
      const unsigned char* r1 = r0 + lay.ldr;
#pragma unroll 1
      for (int d = 0; d < Dr; d += 4) {
        const float4 q = *reinterpret_cast<const float4*>(qrow + d);
        const int e = rbase + d, so = lay.ropeScales + 2 * (e / mla::kKvGroup);
        const uint32_t v0 = *reinterpret_cast<const uint32_t*>(r0 + e), v1 = *reinterpret_cast<const uint32_t*>(r1 + e);
        x0 += scale_at(r0 + so) * (q.x * i8_to_f(v0, 0) + q.y * i8_to_f(v0, 1) + q.z * i8_to_f(v0, 2) + q.w * i8_to_f(v0, 3));
        x1 += scale_at(r1 + so) * (q.x * i8_to_f(v1, 0) + q.y * i8_to_f(v1, 1) + q.z * i8_to_f(v1, 2) + q.w * i8_to_f(v1, 3));
      }
      const int key = it * TN + 2 * kp;
      x0 = key < visible ? x0 * scale2 : -INFINITY;
      x1 = key + 1 < visible ? x1 * scale2 : -INFINITY;
      float p0, p1, alpha;
      softmax_tile8<false>(x0, x1, m, l, p0, p1, alpha);
      const int pb = it & 1, use = it >> 1;
      if (use > 0) bar_wait(freed + pb, (unsigned)(use - 1) & 1);
      *reinterpret_cast<float2*>(sP + (pb * HB + r) * Q8_PSTRIDE + 2 * kp) = make_float2(p0 * Q8_PROB_SCALE, p1 * Q8_PROB_SCALE);
      if (kp == 0) sAlpha[pb * HB + r] = alpha;
      bar_arrive(ready + pb);
      next_stage(stage, phase, stages);
    }
    finish_scores(m, l, r, kp, sM, sL, share, lsepart, H, b);
    return;
  }

  // Weighted-sum warp sw: output columns n0 … n0 + 8·NT − 1 (NT / 4 groups of 32); it brings rows 2·sw and
  // 2·sw + 1 of each tile, latent and rope, lanes 0–1 and 2–3 (MC: lane rank's row of each into both blocks).
  const int sw = warp - Q8_SCORE_WARPS, n0 = sw * NT * 8, row0 = 2 * sw;
  auto zero_row = [&](unsigned char* base, int rr) {
    for (int e = 16 * lane; e < lay.rowBytes; e += 16 * 32) *reinterpret_cast<int4*>(base + rr * ldq + e) = make_int4(0, 0, 0, 0);
    for (int e = 16 * lane; e < lay.ropeRowBytes; e += 16 * 32) *reinterpret_cast<int4*>(base + lay.latentBytes() + rr * lay.ldr + e) = make_int4(0, 0, 0, 0);
  };
  auto load = [&](int it, int st) {
    unsigned char* base = smem + (size_t)st * stageBytes;
    const int64_t first = share.sq.lo + (share.t_begin + it) * TN, end = share.sq.lo + share.sq.n;
    const int valid = (int)(end - first < TN ? end - first : TN);
    unsigned bytes = 0;
    for (int rr = row0; rr < row0 + 2; rr++) {
      if (rr < valid) bytes += (unsigned)(lay.rowBytes + lay.ropeRowBytes);
      else zero_row(base, rr);
    }
    if (row0 + 1 >= valid) {
      MLA_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");)
      __threadfence_block();
    }
    __syncwarp();
    if (lane == 0) bar_expect(full + st, bytes);
    __syncwarp();
    const int rr = row0 + (lane & 1);
    if (lane < 4 && rr < valid) {
      const bool rope = lane >= 2;
      if (rope && !lay.ropeRowBytes) return;
      unsigned char* dst = rope ? base + lay.latentBytes() + rr * lay.ldr : base + rr * ldq;
      const unsigned char* src = rope ? ropeCache + (first + rr) * lay.ropeRowBytes : cache + (first + rr) * lay.rowBytes;
      const unsigned n = (unsigned)(rope ? lay.ropeRowBytes : lay.rowBytes);
      if (!MC) bulk_copy(dst, src, n, full + st);
      else if ((unsigned)(lane & 1) == rank) bulk_copy_multicast(dst, src, n, full + st, 0x3);
    }
  };
  for (int s = 0; s < stages && s < share.ntiles; s++) load(s, s);

  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  // Keys 2t4, 2t4 + 1, 2t4 + 8, 2t4 + 9 at columns n0 + 32m + 4g (B), their scales at group n0/32 + m.
  const int colOff = 2 * t4 * ldq + n0 + 4 * g, sOff = 2 * t4 * ldq + L + n0 / 16;
  for (int it = 0; it < share.ntiles; it++) {
    const int pb = it & 1;
    bar_wait(full + stage, phase);
    bar_wait(ready + pb, (unsigned)(it >> 1) & 1);
    const float* P = sP + (pb * HB + g) * Q8_PSTRIDE + 2 * t4;
    const float2 pA = *reinterpret_cast<const float2*>(P), pB = *reinterpret_cast<const float2*>(P + 8 * Q8_PSTRIDE);
    const float2 pC = *reinterpret_cast<const float2*>(P + 8), pD = *reinterpret_cast<const float2*>(P + 8 * Q8_PSTRIDE + 8);
    const float a_lo = sAlpha[pb * HB + g], a_hi = sAlpha[pb * HB + g + 8];
    rescale_rows(acc, a_lo, a_hi);
    const unsigned char* st = smem + (size_t)stage * stageBytes;
    const unsigned char* kA = st + colOff;
    const unsigned char* sA = st + sOff;
#pragma unroll
    for (int m4 = 0; m4 < NT / 4; m4++) {
      const uint32_t va = *reinterpret_cast<const uint32_t*>(kA + 32 * m4), vb = *reinterpret_cast<const uint32_t*>(kA + ldq + 32 * m4);
      const uint32_t vc = *reinterpret_cast<const uint32_t*>(kA + 8 * ldq + 32 * m4), vd = *reinterpret_cast<const uint32_t*>(kA + 9 * ldq + 32 * m4);
      const float sa = scale_at(sA + 2 * m4), sb = scale_at(sA + ldq + 2 * m4), sc = scale_at(sA + 8 * ldq + 2 * m4), sd = scale_at(sA + 9 * ldq + 2 * m4);
      const uint32_t a[4] = {pack_h2(pA.x * sa, pA.y * sb), pack_h2(pB.x * sa, pB.y * sb), pack_h2(pC.x * sc, pC.y * sd), pack_h2(pD.x * sc, pD.y * sd)};
#pragma unroll
      for (int j = 0; j < 4; j++) mma<__half>(acc[4 * m4 + j], a, i8_column_pair(va, vb, j), i8_column_pair(vc, vd, j));
    }
    release_stage<MC>(empty, freed, stage, phase, pb, it, stages, share.ntiles, rank, lane, load);
    next_stage(stage, phase, stages);
  }
  __syncthreads();  // the score warps' final m and l

  // Row g's columns n0 + 32m + 8t4 + {0…3} are acc[4m + 0…3][0], + {4…7} acc[4m + 0…3][1] (rows g + 8: [2], [3]).
  const float lo = sL[g] * Q8_PROB_SCALE, hi = sL[g + 8] * Q8_PROB_SCALE;
  const float i_lo = lo > 0.f ? 1.f / lo : 0.f, i_hi = hi > 0.f ? 1.f / hi : 0.f;
  float* out = share.nsplit == 1 ? o + (int64_t)b * H * L : opart + ((int64_t)share.split * gridDim.y + b) * H * L;
#pragma unroll
  for (int m4 = 0; m4 < NT / 4; m4++) {
    const int col = n0 + 32 * m4 + 8 * t4;
    const float* a0 = acc[4 * m4];
    const float* a1 = acc[4 * m4 + 1];
    const float* a2 = acc[4 * m4 + 2];
    const float* a3 = acc[4 * m4 + 3];
    if (g < share.nh) {
      float* row = out + (int64_t)(share.h0 + g) * L + col;
      *reinterpret_cast<float4*>(row) = make_float4(a0[0] * i_lo, a1[0] * i_lo, a2[0] * i_lo, a3[0] * i_lo);
      *reinterpret_cast<float4*>(row + 4) = make_float4(a0[1] * i_lo, a1[1] * i_lo, a2[1] * i_lo, a3[1] * i_lo);
    }
    if (g + 8 < share.nh) {
      float* row = out + (int64_t)(share.h0 + g + 8) * L + col;
      *reinterpret_cast<float4*>(row) = make_float4(a0[2] * i_hi, a1[2] * i_hi, a2[2] * i_hi, a3[2] * i_hi);
      *reinterpret_cast<float4*>(row + 4) = make_float4(a0[3] * i_hi, a1[3] * i_hi, a2[3] * i_hi, a3[3] * i_hi);
    }
  }
}

// The most stages (≤ Q8_MAX_STAGES, MHA2MLA_LATENT_Q8_STAGES lower) whose plan fits, or stages 0.
Q8Layout q8_plan(int64_t L, int64_t Hkv, int64_t Dr) {
  const int rowBytes = (int)mla::kv_row_bytes(L, 8), ropeN = (int)(Hkv * Dr);
  const int ropeRowBytes = ropeN ? (int)mla::kv_row_bytes(ropeN, 8) : 0;
  Q8Layout lay{(int)L, (int)Dr, 0, rowBytes, bank_stride(rowBytes), ropeRowBytes, ropeRowBytes, (int)mla::kv_scale_offset(ropeN, 8)};
  static const int cap = [] {
    const char* v = getenv("MHA2MLA_LATENT_Q8_STAGES");
    const int n = v && *v ? atoi(v) : Q8_MAX_STAGES;
    return n < 2 ? 2 : n > Q8_MAX_STAGES ? Q8_MAX_STAGES : n;
  }();
  for (int s = cap; s >= 2; s--) {
    lay.stages = s;
    if (lay.bytes() <= (size_t)smem_optin()) return lay;
  }
  lay.stages = 0;
  return lay;
}

// Per call, so a test can run both routes: MHA2MLA_LATENT_Q8=0 dequantizes the visible rows for the bf16 kernels instead.
bool q8_enabled() {
  const char* v = getenv("MHA2MLA_LATENT_Q8");
  return !(v && std::string(v) == "0");
}
}  // namespace

namespace mla {
bool latent_decode_q8_takes(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  return q8_enabled() && sm90() && role_tiles(L) > 0 && Hkv > 0 && H > 0 && H % Hkv == 0 && Dr >= 0 && Dr <= Q8_MAX_DR && Dr % 4 == 0 && q8_plan(L, Hkv, Dr).stages >= 3;
}

mla_status latent_decode_q8(const unsigned char* const* cs, const unsigned char* const* krs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* qc, const float* qr, float* o, int64_t B, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale) {
  MLA_CHECK(latent_decode_q8_takes(L, H, Hkv, Dr) && B > 0 && B <= 65535, "latent_decode_q8: L one of 256, 512, 1024, 2048, Hkv dividing H, Dr a multiple of 4 ≤ 64, three stages that fit, 1 ≤ B ≤ 65,535");
  const int nt = role_tiles(L), k = nt == 4 ? 0 : nt == 8 ? 1 : nt == 16 ? 2 : 3;
  const Q8Layout lay = q8_plan(L, Hkv, Dr);
  const int64_t hbn = (H + HB - 1) / HB;
  static const void* const kernels[2][4] = {{(const void*)k_latent_decode_q8<4, false>, (const void*)k_latent_decode_q8<8, false>, (const void*)k_latent_decode_q8<16, false>, (const void*)k_latent_decode_q8<32, false>},
                                            {(const void*)k_latent_decode_q8<4, true>, (const void*)k_latent_decode_q8<8, true>, (const void*)k_latent_decode_q8<16, true>, (const void*)k_latent_decode_q8<32, true>}};
  std::vector<const __nv_bfloat16*> c(B), kr(B);
  for (int64_t b = 0; b < B; b++) {
    c[b] = reinterpret_cast<const __nv_bfloat16*>(cs[b]);
    kr[b] = reinterpret_cast<const __nv_bfloat16*>(krs ? krs[b] : nullptr);
  }
  RoleLaunch launch;
  if (mla_status e = role_launch_plan(launch, kernels[0][k], kernels[1][k], Q8_THREADS, lay.bytes(), multicast_capable(hbn))) return e;
  const int cap = (int)std::min<int64_t>(std::max<int64_t>(1, sm_count() / (B * hbn)), 1 << 16);
  SplitCall sc;
  if (mla_status e = split_call(sc, c.data(), kr.data(), lo, n, pos, B, H, L, cap, B == 1 ? MIN_TILES_PER_SPLIT_LATENT_B1 : MIN_TILES_PER_SPLIT)) return e;
  int h32 = (int)H, hkv32 = (int)Hkv;
  float scale2 = scale * LOG2E;
  Q8Layout layArg = lay;
  void* args[] = {(void*)&sc.seqs, (void*)&sc.pos, &window, (void*)&qc, (void*)&qr, &h32, &hkv32, &scale2, &layArg, &sc.splits, &sc.minTiles, (void*)&o, &sc.opart, &sc.lsepart};
  if (mla_status e = role_launch(launch, dim3((unsigned)(hbn * sc.splits), (unsigned)B), Q8_THREADS, lay.bytes(), args)) return e;
  return split_merge(sc, window, OutRows{o, 0}, B, H, L);
}
}  // namespace mla
