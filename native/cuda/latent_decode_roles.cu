// MLA decode over bf16 latent caches with the block's warps split by role, so the tensor cores keep
// working while a softmax runs. The tile-loop kernel (latent_decode.cu) has every warp take every
// phase of a tile in turn (scores, a block barrier, the softmax, a block barrier, the weighted sum):
// ncu found it held by that chain, not by its copies (at llama2-7b's 16k × 8 its copies alone stream
// the cache in 64% of its time; docs/benchmarks.md, twenty-seventh session). Here:
//   4 score warps: S[16 heads × 16 keys] of tile t, each warp a quarter of the latent dims with its
//     query fragments in registers; the partials summed through shared memory (a barrier of these 128
//     threads only), the rope scores added in float32, the online softmax; P and α into one of two
//     buffers, released to the weighted-sum warps by an mbarrier;
//   8 weighted-sum warps: O[16 × L] = α·O + P·C of tile t (each warp L / 8 columns in registers), then
//     the bulk copies of their own two rows of tile t + 3 into the stage once all eight are done.
// So the scores of tile t + 1 run beside the weighted sum of tile t, and no barrier spans the block
// inside the loop. Three stages: t − 1 or t being summed, t or t + 1 being scored, the next in flight.
// The numbers match the tile-loop kernel's (bf16 query and probabilities, float32 everywhere else;
// the rope scores now in float32 from a float32 query, where that kernel rounded the query to bf16).
//
// Shapes: as latent_decode.cu's, with L = 64·NT for NT in {4, 8, 16, 32} (256, 512, 1024, 2048) and
// a three-stage plan that fits the block's shared memory; other shapes take the tile-loop kernel.
#include <algorithm>
#include <cmath>
#include "common.cuh"
#include "mma.cuh"
#include "decode_split.cuh"
#include "latent_common.cuh"

namespace {
// ROLES_WIDE=1, sm_90a only (-gencode=arch=compute_90a,code=sm_90a; scripts/build-native.mjs builds this file so where the
// GPU is 9.0 and in the portable build, MHA2MLA_ROLES_WIDE=0 as the others):
// eight score warps, each an eighth of the latent dims (half the k16 steps and query registers of the four), so
// a tile's score MMAs take half as long on the chain (docs/latent-decode-design.md: the score warps' side of a
// tile is the chain's long pole). Warps 4–7 only help: each adds its partial scores into the slot of warp w − 4
// (a named barrier of the pair) and goes on to the next tile's MMAs while warps 0–3 run the softmax. 512
// threads: the score warpgroups give registers back (setmaxnreg) to the weighted-sum ones, which keep 128
// accumulators each (ROLES_WIDE_SCORE_REGS, default 104, where ptxas spills what the default build spills, 8/12 bytes; 96 spills 20/20, 88 68/72, 112 24/40; the weighted sum takes 256 − that).
// Measured (forty-seventh session, H100, 16k × 8): 1% faster a layer call (0.261 / 0.259 ms against 0.264 / 0.262) and
// +2.7% on the median of four alternated recorded-step pairs (docs/benchmarks.md).
#ifndef ROLES_WIDE
#define ROLES_WIDE 0
#endif
#ifndef ROLES_WIDE_SCORE_REGS
#define ROLES_WIDE_SCORE_REGS 104
#endif
constexpr bool WIDE = ROLES_WIDE != 0;
static_assert(ROLES_WIDE_SCORE_REGS % 8 == 0 && ROLES_WIDE_SCORE_REGS >= 24 && ROLES_WIDE_SCORE_REGS <= 128, "setmaxnreg.dec from the 128 registers 512 threads start with, in steps of 8");
#if ROLES_WIDE && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "ROLES_WIDE needs an sm_90a build: -gencode=arch=compute_90a,code=sm_90a"
#endif
constexpr int SOFTMAX_WARPS = 4;  // the score warps that also run the softmax (four heads each, eight lanes a head)
constexpr int SCORE_WARPS = WIDE ? 8 : 4, SUM_WARPS = 8, ROLE_THREADS = 32 * (SCORE_WARPS + SUM_WARPS);
constexpr int ROLE_STAGES = 3;
constexpr int ROLE_MAX_DR = 64;
// Timing experiments only, never a default: built with -DMLA_ROLES_DIAG=1 the kernel skips its MMAs
// (scores and weighted sum; the softmax, copies and barriers stay); with 2 it skips the copies; 3 is 1
// without the rope rows' copies (the latent rows alone); 4 is 1 with the score warps passing each tile
// on without a softmax (the copies and the stage and buffer hand-offs alone)
// (bench/build-cuda-ab.sh with NVCC_EXTRA=-DMLA_ROLES_DIAG=N). 5 keeps everything but has the weighted-sum
// warps release and refill a stage as soon as the score warps are past it, before their own MMAs read it
// (wrong outputs): what the weighted sum's hold of a stage costs the copies. 6 is the hand-offs alone (no
// copies, no MMAs, no softmax: the stage and probability-buffer barriers alone), 7 adds
// the softmax back: with 2 (the math path) they split a tile's ~2 µs among hand-offs, softmax and MMAs.
// 8 keeps everything but reads each stage's latent rows from shared memory once a warp a tile (every
// k16 step of the scores and every column pair of the weighted sum reuses the first fragment: wrong
// outputs), 9 the same for the score warps alone: what the ~130 KB a tile of ldmatrix reads cost
// (docs/latent-decode-design.md: with the copies' writes ~200 KB a tile through an SM's shared memory,
// ~0.8 µs at 128 bytes a cycle).
#ifndef MLA_ROLES_DIAG
#define MLA_ROLES_DIAG 0
#endif
constexpr bool ROLES_NO_MMA = MLA_ROLES_DIAG == 1 || MLA_ROLES_DIAG == 3 || MLA_ROLES_DIAG == 4 || MLA_ROLES_DIAG == 6 || MLA_ROLES_DIAG == 7;
constexpr bool ROLES_NO_COPY = MLA_ROLES_DIAG == 2 || MLA_ROLES_DIAG == 6 || MLA_ROLES_DIAG == 7;
constexpr bool ROLES_NO_ROPE_COPY = MLA_ROLES_DIAG == 3, ROLES_NO_SOFTMAX = MLA_ROLES_DIAG == 4 || MLA_ROLES_DIAG == 6, ROLES_EARLY_RELEASE = MLA_ROLES_DIAG == 5;
constexpr bool ROLES_SCORE_ONE_READ = MLA_ROLES_DIAG == 8 || MLA_ROLES_DIAG == 9, ROLES_SUM_ONE_READ = MLA_ROLES_DIAG == 8;
// Tuning builds for the score warps' MMA loop (docs/latent-decode-design.md, twenty-eighth session:
// each k16 step likely waits on its own ldmatrix): ROLES_CH accumulator sets (1 frees 8 registers for
// loads in flight, 2 the default), ROLES_PIPE=1 loads step j + 1's fragment before step j's MMAs.
#ifndef ROLES_CH
#define ROLES_CH 2
#endif
#ifndef ROLES_PIPE
#define ROLES_PIPE 0
#endif
// Tuning build ROLES_KEYS8=1 for the softmax's rope dot (docs/latent-decode-design.md, item 1): a lane
// takes keys kp and kp + 8 instead of 2kp and 2kp + 1, so the eight lanes of a head read eight
// consecutive rope rows (528 bytes apart at llama2-7b's spans: eight different 16-byte bank groups)
// with 16-byte loads where Dr is a multiple of 8, not eight dependent 4-byte loads per key whose rows
// 2kp (1,056 bytes apart) meet in four bank groups. The partial scores are stored in the matching key
// order (key k at 2k for k < 8, at 2(k − 8) + 1 after), one 16-byte store per row, so the softmax's
// reads of them do not change.
#ifndef ROLES_KEYS8
#define ROLES_KEYS8 0
#endif
constexpr bool KEYS8 = ROLES_KEYS8 != 0;
// Tuning build ROLES_CPASYNC=1 (thirty-seventh session, when the bulk copies seemed to cap the kernel; the
// thirty-eighth measured them at 3.07 TB/s alone and this build 1.6× slower: docs/benchmarks.md): the weighted-sum warps fill a
// stage with cp.async, 16 bytes a thread over every row of the tile (rows past the sequence's end
// zero-filled by the copy itself), each thread's copies counted on the stage's barrier by its
// cp.async.mbarrier.arrive.noinc. No multicast (each head block copies its rows itself).
#ifndef ROLES_CPASYNC
#define ROLES_CPASYNC 0
#endif
constexpr bool CPASYNC = ROLES_CPASYNC != 0;
// Tuning build ROLES_STAGGER=1: each split walks its tiles from its own starting tile, wrapping around
// (the online softmax takes them in any order; both blocks of a pair alike). In the default order every
// split starts a whole split's bytes after the one before, so all blocks read addresses with the same low
// bits at once (bench/latent-copy.cu STAGGER measures whether that meets the same HBM channels; it did not
// matter, thirty-eighth session).
#ifndef ROLES_STAGGER
#define ROLES_STAGGER 0
#endif
constexpr bool STAGGER = ROLES_STAGGER != 0;
// Two probability buffers: the scores of tile t + 2 wait for the weighted sum of tile t to free its buffer.
constexpr int ROLE_PBUF = 2;
// Tile it's probability buffer, and how many times that buffer was used before it (its barriers' phase parity).
__device__ __forceinline__ int pbuf_of(int it) { return it & 1; }
__device__ __forceinline__ int pbuf_use(int it) { return it >> 1; }
// Tried and dropped (fortieth session, H100, docs/benchmarks.md): L2 prefetch of the rows 1–4 tiles on
// (within noise to 30% slower) and one weighted-sum warp a tile loading the whole stage (1% slower); forty-second
// session: three or four probability buffers, or a buffer freed before the weighted sum's MMAs (within 1%, per
// layer call and per recorded step); forty-third session: the `ready` barrier taking one arrival per score warp instead
// of one per score thread (a tie), each stage refilled a tile later, once the stage of tile t − 1 is empty rather than
// at once (10% slower; both builds: git show 068c2c1:native/cuda/latent_decode_roles.cu).
// A block's first tile under STAGGER (the same for both blocks of a pair: split and sequence alone), and the
// tile it takes at step `it` of its `ntiles`.
__device__ __forceinline__ int tile_rotation(int ntiles, int split, int b) { return STAGGER && ntiles > 0 ? (int)(((int64_t)(split * 37 + b * 11) * 13) % ntiles) : 0; }
__device__ __forceinline__ int tile_at(int it, int rot, int ntiles) {
  if (!STAGGER) return it;
  const int t = it + rot;
  return t >= ntiles ? t - ntiles : t;
}
static_assert(TN == 16 && 2 * SUM_WARPS == TN, "each weighted-sum warp brings two rows of a tile");
static_assert(SOFTMAX_WARPS * 4 == HB, "each softmax warp takes four heads, eight lanes each");
// Floats between two score warps' partials ([HB][TN] each): 16 more, so warp w + 2 meets other banks.
constexpr int ROLE_PART_STRIDE = HB * TN + 16;

struct RoleLayout {
  int L, ldc, ropeStride, Dr;
  __host__ __device__ size_t latentBytes() const { return (size_t)TN * ldc * 2; }
  __host__ __device__ size_t ropeBytes() const { return ((size_t)TN * ropeStride * 2 + 15) & ~size_t(15); }
  __host__ __device__ size_t stageBytes() const { return latentBytes() + ropeBytes(); }
  __host__ __device__ size_t partOffset() const { return stageBytes() * ROLE_STAGES; }
  __host__ __device__ size_t qrOffset() const { return partOffset() + (size_t)SOFTMAX_WARPS * ROLE_PART_STRIDE * 4; }
  __host__ __device__ size_t probsOffset() const { return qrOffset() + (((size_t)HB * Dr * 4 + 15) & ~size_t(15)); }
  __host__ __device__ size_t alphaOffset() const { return probsOffset() + (size_t)ROLE_PBUF * HB * (TN + PAD) * 2; }
  __host__ __device__ size_t statsOffset() const { return alphaOffset() + (size_t)ROLE_PBUF * HB * 4; }
  __host__ __device__ size_t barOffset() const { return (statsOffset() + 2 * HB * 4 + 7) & ~size_t(7); }
  // Per stage full and empty; per probability buffer ready and free.
  __host__ __device__ size_t bytes() const { return barOffset() + (size_t)(2 * ROLE_STAGES + 2 * ROLE_PBUF) * 8; }
};

// A barrier of the score warps alone (named barrier 1; __syncthreads is 0), and one of the softmax warps alone
// (the score warps' own where they are the same warps; named barrier 6 under ROLES_WIDE).
__device__ __forceinline__ void score_warps_sync() { warps_sync<SCORE_WARPS>(); }
__device__ __forceinline__ void softmax_warps_sync() {
  if (WIDE) asm volatile("bar.sync 6, %0;\n" ::"n"(32 * SOFTMAX_WARPS) : "memory");
  else score_warps_sync();
}
// ROLES_WIDE: helper warp 4 + w's partials written (it arrives), for softmax warp w (it waits): named barriers 2–5.
__device__ __forceinline__ void pair_arrive(int w) { asm volatile("bar.arrive %0, 64;\n" ::"r"(2 + w) : "memory"); }
__device__ __forceinline__ void pair_sync(int w) { asm volatile("bar.sync %0, 64;\n" ::"r"(2 + w) : "memory"); }
// A warpgroup's register budget from here on (sm_90a; every warp of the warpgroup runs the same one).
template <int N>
__device__ __forceinline__ void regs_down() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void regs_up() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// q[0…7] · k[0…7] with k eight bf16 in 16 bytes.
__device__ __forceinline__ float dot8(float4 qa, float4 qb, uint4 k) {
  const float2 k01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&k.x)), k23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&k.y));
  const float2 k45 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&k.z)), k67 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&k.w));
  return qa.x * k01.x + qa.y * k01.y + qa.z * k23.x + qa.w * k23.y + qb.x * k45.x + qb.y * k45.y + qb.z * k67.x + qb.w * k67.y;
}

// Grid as the tile-loop kernel's: x = head block + head blocks · split, y = sequence. L = 64·NT.
// MC: launched in clusters of two along x (head blocks 2k and 2k + 1 of one split, an even number of
// head blocks), each block copies half of every tile's latent rows into both blocks' shared memory
// (multicast), so L2 sends each row to the SMs once instead of once per head block; a stage is copied
// again once the weighted-sum warps of both blocks are past it.
template <int NT, bool MC>
__global__ void __launch_bounds__(ROLE_THREADS, 1)
k_latent_decode_roles(const Seq* seqs, const int32_t* pos, int64_t window, const float* qc, const float* qr, int H, int Hkv, float scale2, RoleLayout lay, int gridSplits, int minTiles, OutRows o, float* opart, float* lsepart) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int L = lay.L, Dr = lay.Dr, ldc = lay.ldc;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int group = H / Hkv;
  BlockShare share;
  if (!block_share(share, seqs, pos, window, H, Hkv, Dr, gridSplits, minTiles)) return;
  const int b = blockIdx.y;
  const int ropeCols = share.span.count * Dr;
  const int rot = tile_rotation(share.ntiles, share.split, b);

  float* sPart = (float*)(smem + lay.partOffset());  // [SOFTMAX_WARPS][HB][TN], ROLE_PART_STRIDE apart
  float* sQr = (float*)(smem + lay.qrOffset());      // [HB][Dr] the heads' rope queries
  bf16* sP = (bf16*)(smem + lay.probsOffset());      // [ROLE_PBUF][HB][TN + PAD]
  float* sAlpha = (float*)(smem + lay.alphaOffset());  // [ROLE_PBUF][HB]
  float* sM = (float*)(smem + lay.statsOffset());
  float* sL = sM + HB;
  uint64_t* full = (uint64_t*)(smem + lay.barOffset());  // a stage's copies landed: one arrival per weighted-sum warp with its bytes
  uint64_t* empty = full + ROLE_STAGES;                  // every weighted-sum warp is past the stage (the score warps were before them)
  uint64_t* ready = empty + ROLE_STAGES;                 // a probability buffer written: one arrival per softmax thread
  uint64_t* freed = ready + ROLE_PBUF;                   // a probability buffer read: one arrival per weighted-sum warp
  if (threadIdx.x < ROLE_STAGES) {
    bar_init(full + threadIdx.x, CPASYNC ? 32 * SUM_WARPS : SUM_WARPS);
    bar_init(empty + threadIdx.x, SUM_WARPS * (MC ? 2 : 1));  // MC: the peer's warps too
  }
  if (threadIdx.x < ROLE_PBUF) {
    bar_init(ready + threadIdx.x, 32 * SOFTMAX_WARPS);
    bar_init(freed + threadIdx.x, SUM_WARPS);
  }
  for (int i = threadIdx.x; i < HB * Dr; i += blockDim.x) sQr[i] = i / Dr < share.nh ? qr[((int64_t)b * H + share.h0) * Dr + i] : 0.f;
  MLA_SM90_ONLY(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");)
  MLA_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");)
  // MC: the peer's copies count on this block's barriers (and its warps arrive on them) from its first
  // tile on, so both blocks' barriers are initialized before either copies.
  if (MC) cluster_sync_all();
  else __syncthreads();
  const unsigned rank = MC ? cluster_rank() : 0;

  const unsigned smemAddr = (unsigned)__cvta_generic_to_shared(smem);
  const unsigned stageBytes = (unsigned)lay.stageBytes(), latentBytes = (unsigned)lay.latentBytes();
  int stage = 0;       // it mod ROLE_STAGES
  unsigned phase = 0;  // (it / ROLE_STAGES) mod 2

  if (warp < SCORE_WARPS) {
    if (WIDE) regs_down<ROLES_WIDE_SCORE_REGS>();
    // ROLES_CH accumulator sets for the scores (k16 steps in turn; 2: MMA chains of KQ / 2).
    constexpr int CH = ROLES_CH;
    // k16 steps a score warp takes (the 4·NT of the latent over the score warps).
    constexpr int KQ = 4 * NT / SCORE_WARPS;
    // ROLES_WIDE: warps 4–7 help warps 0–3 (ow: the softmax warp whose partial slot this warp fills).
    const bool helper = WIDE && warp >= SOFTMAX_WARPS;
    const int ow = WIDE ? warp % SOFTMAX_WARPS : warp;
    // This warp's query fragments: latent k16 steps warp·KQ … warp·KQ + KQ − 1 (A layout of m16n8k16).
    uint32_t qf[KQ][4];
    // Four steps' loads in flight at a time: their float2 results all at once would not fit the
    // registers (ptxas spilled ~190 bytes when it issued the 128 loads together). Each batch's address
    // takes a zero the compiler cannot see through from the batch before.
    int after = 0;
#pragma unroll
    for (int j = 0; j < KQ; j++) {
      const int k0 = (warp * KQ + j) * 16 + 2 * t4 + after;
      auto at = [&](int r, int k) -> float2 {
        return r < share.nh ? *reinterpret_cast<const float2*>(qc + ((int64_t)b * H + share.h0 + r) * L + k) : make_float2(0.f, 0.f);
      };
      const float2 a0 = at(g, k0), a1 = at(g + 8, k0), a2 = at(g, k0 + 8), a3 = at(g + 8, k0 + 8);
      qf[j][0] = pack(a0.x, a0.y);
      qf[j][1] = pack(a1.x, a1.y);
      qf[j][2] = pack(a2.x, a2.y);
      qf[j][3] = pack(a3.x, a3.y);
      if (j % 4 == 3) asm volatile("and.b32 %0, %1, 0;\n" : "=r"(after) : "r"(qf[j][3]));
    }
    // The latent B fragment (keys as rows) of this warp's first k16 step; the next is 32 bytes on.
    const int nkRow = (lane & 7) + (lane >> 4) * 8, nkCol = ((lane >> 3) & 1) * 8;
    const unsigned scoreOff = (unsigned)((nkRow * ldc + nkCol + warp * KQ * 16) * 2);
    float* const partMine = sPart + ow * ROLE_PART_STRIDE + g * TN + 2 * t4;
    // The softmax's view: head r (four per warp), keys 2·kp and 2·kp + 1 (eight lanes per head).
    const int r = ow * 4 + (lane >> 3), kp = lane & 7;
    const int rcol = r < share.nh ? ((share.h0 + r) / group - share.span.first) * Dr : 0;  // head r's rope columns in the copied span
    const float* qrow = sQr + r * Dr;
    // Keys of this split visible to the query, counted from its first tile (int: fewer registers in the loop).
    const int visible = (int)(share.sq.n - share.t_begin * TN < (int64_t)share.ntiles * TN ? share.sq.n - share.t_begin * TN : (int64_t)share.ntiles * TN);
    float m = -INFINITY, l = 0.f;
    // Timing builds without a softmax leave the helpers nothing to do: no tile (nothing in the stages' release
    // waits for them, so a helper waiting on `full` could fall behind by a whole turn of the ring).
    for (int it = 0; it < (ROLES_NO_SOFTMAX && helper ? 0 : share.ntiles); it++) {
      bar_wait(full + stage, phase);
      if (ROLES_NO_SOFTMAX) {
        const int pb = pbuf_of(it), use = pbuf_use(it);
        if (use > 0) bar_wait(freed + pb, (unsigned)(use - 1) & 1);
        if (kp == 0) sAlpha[pb * HB + r] = 1.f;
        bar_arrive(ready + pb);
        next_stage(stage, phase, ROLE_STAGES);
        continue;
      }
      const unsigned ka = smemAddr + (unsigned)stage * stageBytes + scoreOff;
      float s[CH][2][4] = {};
      if (ROLES_PIPE) {
        // Step j + 1's fragment loaded before step j's MMAs (in program order: a warp issues in order).
        uint32_t bf[2][4];
        if (!ROLES_NO_MMA) ldsm4<false>(bf[0], ka);
#pragma unroll
        for (int j = 0; j < (ROLES_NO_MMA ? 0 : KQ); j++) {
          if (j + 1 < KQ) ldsm4<false>(bf[(j + 1) & 1], ka + (j + 1) * 32);
          mma(s[j % CH][0], qf[j], bf[j & 1][0], bf[j & 1][1]);
          mma(s[j % CH][1], qf[j], bf[j & 1][2], bf[j & 1][3]);
        }
      } else {
        uint32_t bf[4];
#pragma unroll
        for (int j = 0; j < (ROLES_NO_MMA ? 0 : KQ); j++) {
          if (j == 0 || !ROLES_SCORE_ONE_READ) ldsm4<false>(bf, ka + j * 32);
          mma(s[j % CH][0], qf[j], bf[0], bf[1]);
          mma(s[j % CH][1], qf[j], bf[2], bf[3]);
        }
      }
#pragma unroll
      for (int c = 1; c < CH; c++)
#pragma unroll
        for (int i = 0; i < 8; i++) s[0][i / 4][i % 4] += s[c][i / 4][i % 4];
      score_warps_sync();  // every score warp has read the partials of the tile before
      // This warp's partial scores into its slot; `add`: to what the slot holds (ROLES_WIDE: the helper's, a lane
      // reading back exactly what the same lane of the helper wrote).
      auto store_part = [&](bool add) {
        if (KEYS8) {
          // Keys 2t4, 2t4 + 1, 8 + 2t4, 9 + 2t4 at 4t4, 4t4 + 2, 4t4 + 1, 4t4 + 3.
          float4* lo = reinterpret_cast<float4*>(partMine + 2 * t4);
          float4* hi = reinterpret_cast<float4*>(partMine + 8 * TN + 2 * t4);
          float4 a = make_float4(s[0][0][0], s[0][1][0], s[0][0][1], s[0][1][1]), c = make_float4(s[0][0][2], s[0][1][2], s[0][0][3], s[0][1][3]);
          if (add) {
            const float4 u = *lo, v = *hi;
            a.x += u.x, a.y += u.y, a.z += u.z, a.w += u.w, c.x += v.x, c.y += v.y, c.z += v.z, c.w += v.w;
          }
          *lo = a;
          *hi = c;
        } else {
#pragma unroll
          for (int nt = 0; nt < 2; nt++) {
            float2* lo = reinterpret_cast<float2*>(partMine + nt * 8);
            float2* hi = reinterpret_cast<float2*>(partMine + 8 * TN + nt * 8);
            float2 a = make_float2(s[0][nt][0], s[0][nt][1]), c = make_float2(s[0][nt][2], s[0][nt][3]);
            if (add) {
              const float2 u = *lo, v = *hi;
              a.x += u.x, a.y += u.y, c.x += v.x, c.y += v.y;
            }
            *lo = a;
            *hi = c;
          }
        }
      };
      if (helper) {
        // Its share is written: on to the next tile's MMAs while the softmax warps finish this one.
        store_part(false);
        pair_arrive(ow);
        next_stage(stage, phase, ROLE_STAGES);
        continue;
      }
      if (WIDE) pair_sync(ow);
      store_part(WIDE);
      softmax_warps_sync();
      // Scores of head r at keys 2kp, 2kp + 1 (KEYS8: kp, kp + 8): the four partials, then the rope part in float32.
      const float* pr = sPart + r * TN + 2 * kp;
      float x0 = 0.f, x1 = 0.f;
#pragma unroll
      for (int w = 0; w < SOFTMAX_WARPS; w++) {
        const float2 v = *reinterpret_cast<const float2*>(pr + w * ROLE_PART_STRIDE);
        x0 += v.x;
        x1 += v.y;
      }
      const bf16* k0 = (const bf16*)(smem + (size_t)stage * stageBytes + latentBytes) + (KEYS8 ? kp : 2 * kp) * lay.ropeStride + rcol;
      const bf16* k1 = k0 + (KEYS8 ? 8 : 1) * lay.ropeStride;
      if (KEYS8 && Dr % 8 == 0) {
        // 16-byte aligned: the rope area, rcol and the row stride are multiples of eight bf16 here.
#pragma unroll 1
        for (int d = 0; d < Dr; d += 8) {
          const float4 qa = *reinterpret_cast<const float4*>(qrow + d), qb = *reinterpret_cast<const float4*>(qrow + d + 4);
          x0 += dot8(qa, qb, *reinterpret_cast<const uint4*>(k0 + d));
          x1 += dot8(qa, qb, *reinterpret_cast<const uint4*>(k1 + d));
        }
      } else {
#pragma unroll 1
        for (int d = 0; d < Dr; d += 2) {
          const float2 q = *reinterpret_cast<const float2*>(qrow + d);
          const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(k0 + d));
          const float2 c = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(k1 + d));
          x0 += q.x * a.x + q.y * a.y;
          x1 += q.x * c.x + q.y * c.y;
        }
      }
      const int key = tile_at(it, rot, share.ntiles) * TN + (KEYS8 ? kp : 2 * kp);
      x0 = key < visible ? x0 * scale2 : -INFINITY;
      x1 = key + (KEYS8 ? 8 : 1) < visible ? x1 * scale2 : -INFINITY;
      float pf0, pf1, alpha;
      softmax_tile8<true>(x0, x1, m, l, pf0, pf1, alpha);
      const __nv_bfloat162 p = __floats2bfloat162_rn(pf0, pf1);  // exact: already rounded
      // Buffer pb was last read by the weighted sum of tile it − ROLE_PBUF.
      const int pb = pbuf_of(it), use = pbuf_use(it);
      if (use > 0) bar_wait(freed + pb, (unsigned)(use - 1) & 1);
      if (KEYS8) {
        sP[(pb * HB + r) * (TN + PAD) + kp] = p.x;
        sP[(pb * HB + r) * (TN + PAD) + kp + 8] = p.y;
      } else {
        *reinterpret_cast<__nv_bfloat162*>(sP + (pb * HB + r) * (TN + PAD) + 2 * kp) = p;
      }
      if (kp == 0) sAlpha[pb * HB + r] = alpha;
      bar_arrive(ready + pb);
      next_stage(stage, phase, ROLE_STAGES);
    }
    if (helper) {
      __syncthreads();  // finish_scores' barrier, met by every thread of the block
      return;
    }
    finish_scores(m, l, r, kp, sM, sL, share, lsepart, H, b);
    return;
  }
  if (WIDE) regs_up<256 - ROLES_WIDE_SCORE_REGS>();

  // Weighted-sum warp sw: output columns n0 … n0 + 8·NT − 1; it brings rows 2·sw and 2·sw + 1 of each tile.
  const int sw = warp - SCORE_WARPS, n0 = sw * NT * 8, row0 = 2 * sw;
  const unsigned latentRow = (unsigned)L * 2, ropeRow = (unsigned)ropeCols * 2;
  // Tile `it` into stage `st`: lanes 0–1 the latent rows, 2–3 their rope spans; rows past the
  // sequence's end are zeroed (they meet probability 0, and stale shared memory could hold NaN). MC: lane
  // `rank` copies its latent row into both blocks and the peer's same warp the other, so each warp still
  // expects both rows' bytes on its own barrier (the peer's may land before the expectation: the
  // transaction count may go below zero until it is set). Both blocks zero the same rows: a tile's
  // valid rows depend only on the split and the sequence.
  // Row rr of a stage zeroed by this warp (rows past the sequence's end meet probability 0, and stale shared
  // memory could hold NaN).
  auto zero_row = [&](bf16* sC, bf16* sR, int rr) {
    for (int e = lane; e < L / 8; e += 32) *reinterpret_cast<int4*>(sC + rr * ldc + e * 8) = make_int4(0, 0, 0, 0);
    for (int e = lane; e < ropeCols; e += 32) sR[rr * lay.ropeStride + e] = __float2bfloat16(0.f);
  };
  auto load = [&](int it, int st) {
    unsigned char* base = smem + (size_t)st * lay.stageBytes();
    bf16* sC = (bf16*)base;
    bf16* sR = (bf16*)(base + lay.latentBytes());
    const int64_t first = share.sq.lo + (share.t_begin + tile_at(it, rot, share.ntiles)) * TN, end = share.sq.lo + share.sq.n;
    const int valid = (int)(end - first < TN ? end - first : TN);
    if (CPASYNC) {
      const int latentChunks = L / 8, rowChunks = latentChunks + (ROLES_NO_ROPE_COPY ? 0 : ropeCols / 8);
      for (int i = lane + 32 * sw; i < (ROLES_NO_COPY ? 0 : TN * rowChunks); i += 32 * SUM_WARPS) {
        const int rr = i / rowChunks, k = i % rowChunks;
        const bool ok = rr < valid;
        const int64_t src = first + (ok ? rr : 0);  // an address inside the cache even where the copy zero-fills
        if (k < latentChunks) cp16(sC + rr * ldc + k * 8, share.sq.c + src * L + k * 8, ok);
        else cp16(sR + rr * lay.ropeStride + (k - latentChunks) * 8, share.sq.kr + (src * Hkv + share.span.first) * Dr + (k - latentChunks) * 8, ok);
      }
      bar_arrive_copies(full + st);
      return;
    }
    unsigned bytes = 0;
    for (int rr = row0; rr < row0 + 2; rr++) {
      if (rr < valid) {
        if (!ROLES_NO_COPY) bytes += latentRow + (ROLES_NO_ROPE_COPY ? 0u : ropeRow);
        continue;
      }
      zero_row(sC, sR, rr);
    }
    if (row0 + 1 >= valid) {
      // The zeros are generic-proxy writes to rows a later bulk copy (async proxy) may write again.
      MLA_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");)
      __threadfence_block();
    }
    __syncwarp();
    if (lane == 0) bar_expect(full + st, bytes);
    __syncwarp();
    const int rr = row0 + (lane & 1);
    if (lane < 4 && rr < valid && !ROLES_NO_COPY) {
      if (lane < 2) {
        if (!MC) bulk_copy(sC + rr * ldc, share.sq.c + (first + rr) * L, latentRow, full + st);
        else if ((unsigned)lane == rank) bulk_copy_multicast(sC + rr * ldc, share.sq.c + (first + rr) * L, latentRow, full + st, 0x3);
      }
      else if (ropeRow && !ROLES_NO_ROPE_COPY) bulk_copy(sR + rr * lay.ropeStride, share.sq.kr + ((first + rr) * Hkv + share.span.first) * Dr, ropeRow, full + st);
    }
  };
  for (int s = 0; s < ROLE_STAGES && s < share.ntiles; s++) load(s, s);

  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  // ldmatrix addresses: the weighted sum's B fragment (rows over the keys) at this warp's columns, and
  // the probabilities' A fragment in buffer 0 (buffer 1 is probsBytes on).
  const unsigned pvOff = (unsigned)((((lane & 7) + ((lane >> 3) & 1) * 8) * ldc + n0 + (lane >> 4) * 8) * 2);
  const unsigned pAddr = (unsigned)__cvta_generic_to_shared(sP) + (unsigned)(((lane & 15) * (TN + PAD) + (lane >> 4) * 8) * 2);
  const unsigned probsBytes = (unsigned)(HB * (TN + PAD) * 2);
  for (int it = 0; it < share.ntiles; it++) {
    const int pb = pbuf_of(it);
    bar_wait(full + stage, phase);  // the copies' bytes are visible to the threads that wait on their barrier
    bar_wait(ready + pb, (unsigned)pbuf_use(it) & 1);
    uint32_t pa[4];
    ldsm4<false>(pa, pAddr + pb * probsBytes);
    const float a_lo = sAlpha[pb * HB + g], a_hi = sAlpha[pb * HB + g + 8];
    rescale_rows(acc, a_lo, a_hi);
    const unsigned va = smemAddr + (unsigned)stage * stageBytes + pvOff;
    auto release = [&]() { release_stage<MC>(empty, freed, stage, phase, pb, it, ROLE_STAGES, share.ntiles, rank, lane, load); };
    if (ROLES_EARLY_RELEASE) release();
    uint32_t bf[4];
#pragma unroll
    for (int nt = 0; nt < (ROLES_NO_MMA ? 0 : NT); nt += 2) {
      if (nt == 0 || !ROLES_SUM_ONE_READ) ldsm4<true>(bf, va + nt * 16);
      mma(acc[nt], pa, bf[0], bf[1]);
      mma(acc[nt + 1], pa, bf[2], bf[3]);
    }
    // Every lane's reads of the stage and the buffer are behind it (their values fed the MMAs above).
    if (!ROLES_EARLY_RELEASE) release();
    next_stage(stage, phase, ROLE_STAGES);
  }
  __syncthreads();  // the score warps' final m and l

  write_output(acc, sL[g], sL[g + 8], share, o, opart, H, L, n0, g, t4);
}

// The plan: three stages of latent rows (padded by 16 bytes) and rope spans (the widest a head block
// copies, padded the same), or stages 0 when it does not fit.
RoleLayout role_plan(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  int ropeCols = 0;
  for (int hb = 0; hb * HB < H; hb++) ropeCols = std::max(ropeCols, rope_span(hb, (int)H, (int)Hkv, (int)Dr).count * (int)Dr);
  return RoleLayout{(int)L, (int)L + PAD, ropeCols + 8, (int)Dr};
}

// Pairs (MC) as multicast_capable says, never in the timing and tuning builds that copy otherwise (the
// no-copy build's phases would rest on remote arrivals landing in order).
bool multicast_pairs(int64_t hbn) { return !ROLES_NO_COPY && !CPASYNC && multicast_capable(hbn); }
}  // namespace

namespace mla {
// Whether this library holds an image of the kernel the device can run: a ROLES_WIDE build has an sm_90a one (and an
// sm_80 stub), no PTX, so a newer card takes the tile-loop kernel instead of failing to launch.
bool roles_image() {
  static const bool ok = [] {
    cudaFuncAttributes a;
    const bool has = cudaFuncGetAttributes(&a, (const void*)k_latent_decode_roles<32, false>) == cudaSuccess;
    if (!has) (void)cudaGetLastError();  // the failed query is not a later call's error
    return has;
  }();
  return ok;
}

bool latent_decode_roles_takes(int64_t L, int64_t H, int64_t Hkv, int64_t Dr) {
  return sm90() && roles_image() && role_tiles(L) > 0 && Hkv > 0 && H > 0 && H % Hkv == 0 && Dr >= 0 && Dr <= ROLE_MAX_DR && Dr % 2 == 0 && (Hkv * Dr) % 8 == 0 && role_plan(L, H, Hkv, Dr).bytes() <= (size_t)smem_optin();
}

mla_status latent_decode_roles(const __nv_bfloat16* const* cs, const __nv_bfloat16* const* krs, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t window, const float* qc, const float* qr, void* o, bool obf16, int64_t B, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale) {
  MLA_CHECK(latent_decode_roles_takes(L, H, Hkv, Dr) && B > 0 && B <= 65535, "latent_decode_roles: L one of 256, 512, 1024, 2048, Hkv dividing H, Dr even ≤ 64, Hkv·Dr a multiple of 8, a three-stage plan that fits, 1 ≤ B ≤ 65,535");
  const int nt = role_tiles(L);
  const RoleLayout lay = role_plan(L, H, Hkv, Dr);
  const int64_t hbn = (H + HB - 1) / HB;
  const int k = nt == 4 ? 0 : nt == 8 ? 1 : nt == 16 ? 2 : 3;
  static const void* const kernels[2][4] = {{(const void*)k_latent_decode_roles<4, false>, (const void*)k_latent_decode_roles<8, false>, (const void*)k_latent_decode_roles<16, false>, (const void*)k_latent_decode_roles<32, false>},
                                            {(const void*)k_latent_decode_roles<4, true>, (const void*)k_latent_decode_roles<8, true>, (const void*)k_latent_decode_roles<16, true>, (const void*)k_latent_decode_roles<32, true>}};
  RoleLaunch launch;
  if (mla_status e = role_launch_plan(launch, kernels[0][k], kernels[1][k], ROLE_THREADS, lay.bytes(), multicast_pairs(hbn))) return e;
  // One block per SM (the plan takes most of its shared memory): splits along the context up to one
  // wave, as the tile-loop kernel's.
  const int64_t wave = sm_count();
  const int cap = (int)std::min<int64_t>(std::max<int64_t>(1, wave / (B * hbn)), 1 << 16);
  SplitCall sc;
  if (mla_status e = split_call(sc, cs, krs, lo, n, pos, B, H, L, cap, B == 1 ? MIN_TILES_PER_SPLIT_LATENT_B1 : MIN_TILES_PER_SPLIT)) return e;
  int h32 = (int)H, hkv32 = (int)Hkv;
  float scale2 = scale * LOG2E;
  RoleLayout layArg = lay;
  OutRows out{o, obf16};
  void* args[] = {(void*)&sc.seqs, (void*)&sc.pos, &window, (void*)&qc, (void*)&qr, &h32, &hkv32, &scale2, &layArg, &sc.splits, &sc.minTiles, &out, &sc.opart, &sc.lsepart};
  if (mla_status e = role_launch(launch, dim3((unsigned)(hbn * sc.splits), (unsigned)B), ROLE_THREADS, lay.bytes(), args)) return e;
  return split_merge(sc, window, out, B, H, L);
}
}  // namespace mla
