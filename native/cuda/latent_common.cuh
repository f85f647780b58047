// What the two latent decode kernels share (latent_decode.cu: the tile loop every warp runs;
// latent_decode_ws.cu: score and weighted-sum warps apart): the mbarrier and bulk-copy primitives of
// sm_90, ldmatrix at fixed shared addresses, the rope columns a head block copies, and the device
// queries their plans need.
#pragma once
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <vector>
#include "common.cuh"
#include "mma.cuh"
#include "decode_split.cuh"

namespace {
using namespace mla_mma;
constexpr int HB = 16;   // query heads per block (one m16 tile)
constexpr int PAD = 8;   // bf16 of padding per shared latent row: ldmatrix rows fall in distinct banks

// The bulk copies and transaction-counting barriers below are sm_90 features; the sm_80 code of a fat
// build never runs this kernel (latent_decode_takes asks for compute capability 9.0 or newer).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define MLA_SM90_ONLY(body) __trap();
#else
#define MLA_SM90_ONLY(body) body
#endif
// A stage's arrival barrier (mbarrier): one expected arrival plus the bytes its bulk copies bring.
__device__ __forceinline__ void bar_init(uint64_t* bar, unsigned arrivals) {
  MLA_SM90_ONLY({
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(arrivals));
  })
}
// This thread's arrival on `bar` once its cp.async copies issued so far have landed (counted in the
// barrier's arrivals: .noinc).
__device__ __forceinline__ void bar_arrive_copies(uint64_t* bar) {
  MLA_SM90_ONLY({
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
  })
}
__device__ __forceinline__ void bar_expect(uint64_t* bar, unsigned bytes) {
  MLA_SM90_ONLY({
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
  })
}
__device__ __forceinline__ void bar_arrive(uint64_t* bar) {
  MLA_SM90_ONLY({
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
  })
}
__device__ __forceinline__ void bar_wait(uint64_t* bar, unsigned parity) {
  MLA_SM90_ONLY({
  const unsigned a = (unsigned)__cvta_generic_to_shared(bar);
  asm volatile(
      "{\n.reg .pred p;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n}\n" ::"r"(a), "r"(parity) : "memory");
  })
}
// `bytes` (a multiple of 16, both addresses 16-byte aligned) global → shared by the copy engine, counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  MLA_SM90_ONLY({
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
  })
}
// The same bytes into the same shared-memory offset of every block of the cluster in `mask` (bit r:
// rank r), each copy counted on the barrier at `bar`'s offset in that block.
__device__ __forceinline__ void bulk_copy_multicast(void* dst, const void* src, unsigned bytes, uint64_t* bar, uint16_t mask) {
  MLA_SM90_ONLY({
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], %4;\n"
               ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(bar)), "h"(mask) : "memory");
  })
}
// An arrival on the barrier at `bar`'s offset in block `rank` of the cluster. Release at CTA scope (the
// instruction's default), as CUTLASS's multicast pipelines release a stage to its producers: a cluster-scope
// release compiles to two GPU-scope MEMBARs (docs/wip/README.md, the pair kernel's first versions). What
// it orders is only a write after read (the peer's next copy into the stage after this block's reads of
// it), and every such read has returned before the arrival issues: its value fed an MMA (or, for the
// probabilities, the ready arrival) earlier in the same warp's program order.
__device__ __forceinline__ void bar_arrive_remote(uint64_t* bar, unsigned rank) {
  MLA_SM90_ONLY({
  asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\nmbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n"
               ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(rank) : "memory");
  })
}
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r = 0;
  MLA_SM90_ONLY(asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));)
  return r;
}
// Every thread of every block of the cluster (also a block barrier).
__device__ __forceinline__ void cluster_sync_all() {
  MLA_SM90_ONLY(asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");)
}
// Four (x4) or two (x2) 8×8 bf16 matrices at a shared-memory byte address (lane i: a row of matrix i / 8),
// optionally transposed: the loops below keep these addresses in registers and step them by adds.
template <bool trans>
__device__ __forceinline__ void ldsm4(uint32_t* r, unsigned a) {
  if (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm2t(uint32_t* r, unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

// The rope groups head block hb copies from each rope row: [first, first + count). Only its own
// heads' groups when they start and end on 16-byte boundaries (llama2-7b: half of each row per head
// block), else the whole row.
struct RopeSpan {
  int first, count;
};
__host__ __device__ inline RopeSpan rope_span(int hb, int H, int Hkv, int Dr) {
  const int group = H / Hkv, h0 = hb * HB, h1 = (h0 + HB < H ? h0 + HB : H) - 1;
  const int gA = h0 / group, gB = h1 / group;
  if ((gA * Dr) % 8 == 0 && ((gB - gA + 1) * Dr) % 8 == 0) return {gA, gB - gA + 1};
  return {0, Hkv};
}

// A block's share of a decode call: its sequence, its block of HB query heads (h0, nh of them), its
// split of the sequence's visible keys (tiles t_begin … t_begin + ntiles − 1) and the rope span it copies.
// Grid: x = head block + head blocks · split, y = sequence. False for a block past its sequence's
// splits (a shorter sequence than the grid was sized for), which has nothing to do.
struct BlockShare {
  Seq sq;
  int h0, nh, split, nsplit, ntiles;
  int64_t t_begin;
  RopeSpan span;
};
__device__ __forceinline__ bool block_share(BlockShare& w, const Seq* seqs, const int32_t* pos, int64_t window, int H, int Hkv, int Dr, int gridSplits, int minTiles) {
  const int hbn = (H + HB - 1) / HB, hb = blockIdx.x % hbn;
  w.split = blockIdx.x / hbn;
  w.h0 = hb * HB;
  w.nh = min(HB, H - w.h0);
  w.sq = seq_of(seqs, pos, window, blockIdx.y);
  w.nsplit = splits_of(w.sq.n, gridSplits, minTiles);
  if (w.split >= w.nsplit) return false;
  const int64_t tiles = (w.sq.n + TN - 1) / TN, per = (tiles + w.nsplit - 1) / w.nsplit;
  w.t_begin = tiles < w.split * per ? tiles : w.split * per;
  const int64_t t_end = tiles < w.t_begin + per ? tiles : w.t_begin + per;
  w.ntiles = (int)(t_end - w.t_begin);
  w.span = rope_span(hb, H, Hkv, Dr);
  return true;
}

// A warp's share of the output: rows g and g + 8 of its NT n8 tiles from column n0, divided by their
// l (l 0, an empty split: zeros), into o [B, H, L] (float32 or bf16) or, with several splits, this
// split's float32 partial.
template <int NT>
__device__ __forceinline__ void write_output(const float (&acc)[NT][4], float l_lo, float l_hi, const BlockShare& w, OutRows o, float* opart, int H, int L, int n0, int g, int t4) {
  const float i_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, i_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
  const bool direct = w.nsplit == 1;
  const OutRows out = direct ? o : OutRows{opart, 0};
  const int64_t base = (direct ? (int64_t)blockIdx.y : (int64_t)w.split * gridDim.y + blockIdx.y) * H * L;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    const int col = n0 + nt * 8 + 2 * t4;
    if (g < w.nh) store_pair(out, base + (int64_t)(w.h0 + g) * L + col, acc[nt][0] * i_lo, acc[nt][1] * i_lo);
    if (g + 8 < w.nh) store_pair(out, base + (int64_t)(w.h0 + g + 8) * L + col, acc[nt][2] * i_hi, acc[nt][3] * i_hi);
  }
}

// Named barrier 1 of a role kernel's first `warps` warps alone (its score warps; __syncthreads is 0).
template <int warps>
__device__ __forceinline__ void warps_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(32 * warps) : "memory"); }

// A role kernel's n8 output tiles per weighted-sum warp for latent width L (eight such warps), 0 where it
// does not take L.
inline int role_tiles(int64_t L) { return L == 256 ? 4 : L == 512 ? 8 : L == 1024 ? 16 : L == 2048 ? 32 : 0; }

// acc's rows g (slots 0, 1) and g + 8 (slots 2, 3) scaled by their softmax correction, skipped while no
// row of the warp changed its maximum (the common case once a sequence's largest scores are behind).
template <int NT>
__device__ __forceinline__ void rescale_rows(float (&acc)[NT][4], float a_lo, float a_hi) {
  if (__all_sync(0xffffffffu, a_lo == 1.f && a_hi == 1.f)) return;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    acc[nt][0] *= a_lo;
    acc[nt][1] *= a_lo;
    acc[nt][2] *= a_hi;
    acc[nt][3] *= a_hi;
  }
}

// A role kernel's score warps, after their last tile: head r's final max and sum (from lane kp 0 of its
// eight) to shared memory for the weighted-sum warps (the block barrier they meet there), and with several
// splits each head's log2-sum-exp for the merge.
__device__ __forceinline__ void finish_scores(float m, float l, int r, int kp, float* sM, float* sL, const BlockShare& share, float* lsepart, int H, int b) {
  if (kp == 0) {
    sM[r] = m;
    sL[r] = l;
  }
  __syncthreads();
  if (threadIdx.x < share.nh && share.nsplit > 1) {
    const float lt = sL[threadIdx.x];
    lsepart[((int64_t)share.split * gridDim.y + b) * H + share.h0 + threadIdx.x] = lt > 0.f ? sM[threadIdx.x] + log2f(lt) : -INFINITY;
  }
}

// Head r's online softmax over one tile (log2 domain; two keys a lane, eight lanes a head): the tile's
// probabilities p0, p1 against the new running max and alpha, the correction of what came before; m and l
// move on. Bf16: the probabilities rounded to bf16 and l summing the rounded values (what the weighted sum
// then reads). The tile's first key is visible, so the new max is finite.
template <bool Bf16>
__device__ __forceinline__ void softmax_tile8(float x0, float x1, float& m, float& l, float& p0, float& p1, float& alpha) {
  float mt = fmaxf(x0, x1);
#pragma unroll
  for (int off = 1; off < 8; off <<= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
  const float mNew = fmaxf(m, mt);
  p0 = ex2(x0 - mNew);
  p1 = ex2(x1 - mNew);
  if (Bf16) {
    const float2 r = __bfloat1622float2(__floats2bfloat162_rn(p0, p1));
    p0 = r.x;
    p1 = r.y;
  }
  float ps = p0 + p1;
#pragma unroll
  for (int off = 1; off < 8; off <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
  alpha = ex2(m - mNew);
  l = l * alpha + ps;
  m = mNew;
}

// The next stage of a ring of `stages`, flipping the barriers' parity each time round.
__device__ __forceinline__ void next_stage(int& stage, unsigned& phase, int stages) {
  if (++stage == stages) {
    stage = 0;
    phase ^= 1;
  }
}

// A weighted-sum warp done with tile `it` of the role kernels (bf16 and int8): it frees the stage (`empty`: this block's
// barrier, and under MC the peer's, which waits for both blocks' readers before the multicast refill, only where a tile
// `stages` on refills it: past the last the peer may have finished) and the probability buffer `pb`; then, where that
// refill comes, waits for every reader of the stage and issues this warp's copies of tile it + stages (load(tile, stage)).
template <bool MC, class Load>
__device__ __forceinline__ void release_stage(uint64_t* empty, uint64_t* freed, int stage, unsigned phase, int pb, int it, int stages, int ntiles, unsigned rank, int lane, Load&& load) {
  __syncwarp();
  if (lane == 0) {
    bar_arrive(empty + stage);
    if (MC && it + stages < ntiles) bar_arrive_remote(empty + stage, rank ^ 1);
    bar_arrive(freed + pb);
  }
  if (it + stages < ntiles) {
    bar_wait(empty + stage, phase);
    load(it + stages, stage);
  }
}

bool sm90() {
  static int major = -1;
  if (major < 0 && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, mla::ctx()->device) != cudaSuccess) major = 0;
  return major >= 9;
}

// Shared memory one block may use (227 KB on sm_90 data-center parts, ~99 KB on 12.x consumer parts).
int smem_optin() {
  static int n = -1;
  if (n < 0 && cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, mla::ctx()->device) != cudaSuccess) n = 48 * 1024;
  return n;
}


// Whether a role kernel's head blocks may run in clusters of two that copy each row once (multicast):
// an even number of head blocks (a cluster holds two of one split) on compute capability 9.x (the only
// one measured; ptxas warns that multicast may be slow elsewhere), unless MHA2MLA_LATENT_MULTICAST=0.
// Read per call, so a test can run both.
inline bool multicast_capable(int64_t hbn) {
  if (hbn % 2 != 0) return false;
  static int major = -1;
  if (major < 0 && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, mla::ctx()->device) != cudaSuccess) major = 0;
  if (major != 9) return false;
  const char* v = getenv("MHA2MLA_LATENT_MULTICAST");
  return !(v && v[0] == '0' && !v[1]);
}

// Which of a role kernel's two builds a call launches: `paired` (clusters of two, multicast copies) where
// the call may pair and as many pairs fit at once as there are SM pairs (two SMs of one GPC each; 66 on
// an H100): then its splits are the unpaired build's (one wave of blocks) and so are its output's bits.
// Elsewhere, or where the query fails, `plain` (each block copies its own rows).
// Clusters of two blocks along x.
inline void pair_clusters(cudaLaunchAttribute& a) {
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = 2;
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = 1;
}
struct RoleLaunch {
  const void* fn = nullptr;
  bool paired = false;
};
inline mla_status role_launch_plan(RoleLaunch& r, const void* plain, const void* paired, unsigned threads, size_t smemBytes, bool mayPair) {
  struct Asked {
    const void* fn;
    size_t bytes;
    bool fits;
  };
  static std::vector<const void*> configured;
  static std::vector<Asked> asked;
  auto configure = [&](const void* fn) -> mla_status {
    if (std::find(configured.begin(), configured.end(), fn) == configured.end()) {
      CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin()));
      configured.push_back(fn);
    }
    return MLA_OK;
  };
  r.paired = false;
  if (mayPair) {
    if (mla_status e = configure(paired)) return e;
    auto hit = std::find_if(asked.begin(), asked.end(), [&](const Asked& a) { return a.fn == paired && a.bytes == smemBytes; });
    if (hit == asked.end()) {
      cudaLaunchConfig_t cfg = {};
      cudaLaunchAttribute attr[1];
      pair_clusters(attr[0]);
      cfg.gridDim = dim3(2, 1);
      cfg.blockDim = dim3(threads);
      cfg.dynamicSmemBytes = smemBytes;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      int pairs = 0;
      if (cudaOccupancyMaxActiveClusters(&pairs, paired, &cfg) != cudaSuccess) {
        cudaGetLastError();
        pairs = 0;
      }
      asked.push_back({paired, smemBytes, 2 * pairs >= mla::sm_count()});
      hit = asked.end() - 1;
    }
    r.paired = hit->fits;
  }
  r.fn = r.paired ? paired : plain;
  return r.paired ? MLA_OK : configure(plain);
}
// The launch itself (clusters of two along x when paired).
inline mla_status role_launch(const RoleLaunch& r, dim3 grid, unsigned threads, size_t smemBytes, void** args) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  pair_clusters(attr[0]);
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smemBytes;
  cfg.stream = mla::ctx()->stream;
  cfg.attrs = r.paired ? attr : nullptr;
  cfg.numAttrs = r.paired ? 1 : 0;
  CUDA_TRY(cudaLaunchKernelExC(&cfg, r.fn, args));
  return MLA_OK;
}

}  // namespace
