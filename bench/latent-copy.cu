// How fast can the latent decode kernel's blocks stream llama2-7b's latent cache into shared memory, by
// each way of copying it? (issue 13; docs/latent-decode-design.md, thirty-seventh session). The roles
// kernel's copy path alone (no MMAs, no softmax) reads 16k × 8 at ~2.5 TB/s of unique bytes on an H100,
// where MHA's kernel reads its cache at ~3.1: this isolates the copies from everything else the kernel does.
//
// The grid is the kernel's at 16k × 8: 2 head blocks × 8 context splits × 8 sequences = 128 blocks of 384
// threads, one per SM, each walking its split's tiles of 16 rows (4 KB of latent and its head block's 512
// bytes of rope span a row) through a ring of STAGES shared-memory stages with full/empty mbarriers. Eight
// "copy" warps release each stage and refill it; four more only wait for each stage, as the score warps
// do; all twelve release each stage. No arithmetic: a stage is released as soon as it lands, so the whole
// ring is in flight. Modes:
//   rows      bulk copies of one latent row (4 KB) and one rope span (512 B) each, two rows a copy warp
//             (the kernel's way);
//   rows-mc   rows in 2-block clusters: each latent row multicast into both head blocks by one of them
//             (the kernel's default);
//   tile      one bulk copy of the tile's 16 contiguous latent rows (64 KB; unpadded in shared memory),
//             the rope spans one bulk copy a row (warp 0's lanes 0–15);
//   tile-mc   tile, the latent tile multicast by the pair's blocks in turn;
//   cpasync   cp.async of 16 bytes a thread (256 copy threads, 18 chunks each a tile), counted on the
//             stage's barrier (cp.async.mbarrier.arrive.noinc);
//   ldg       no shared memory: every thread loads its chunks of each tile into registers (16-byte
//             ld.global.nc), the plain read rate of the same work split.
// HOLD=N: every warp keeps each stage N clock cycles after it lands before releasing it, as the kernel's warps hold
// a stage through its scores, softmax and weighted sum (its tile period is ~4,000 cycles at 16k × 8): how the
// read rate falls as fewer stages are left in flight.
// STAGGER=1 walks each split's tiles from a different starting tile (wrapping around), the pair of a split
// alike: in the kernel's order every split starts 8 MB after the one before, so all 64 streams read addresses
// with the same low bits at once, which may meet the same HBM channels (an online softmax takes its tiles in
// any order, so the kernel could walk them rotated).
// Prints ms per pass and the unique bytes' rate. Build and run (GPU machine, sm_90):
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/lc bench/latent-copy.cu && /tmp/lc [SEQS=8] [CTX=16384] [STAGES=3] [STAGGER=0] [HOLD=0] [MODES=all|rows-mc,…]
#include <cuda_bf16.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

namespace {
constexpr int L = 2048, ROPE = 512, SPAN = 256, TN = 16, SPLITS = 8, HBN = 2;
constexpr int THREADS = 384, COPY_WARPS = 8, WAIT_WARPS = 4;
static_assert(THREADS == 32 * (COPY_WARPS + WAIT_WARPS), "eight copy warps and four that only wait");
constexpr int LDC = L + 8, RSTRIDE = SPAN + 8;  // padded rows (the kernel's ldmatrix layout)
enum Mode { ROWS, ROWS_MC, TILE, TILE_MC, CPASYNC, LDG };
const char* const NAMES[] = {"rows", "rows-mc", "tile", "tile-mc", "cpasync", "ldg"};

__host__ __device__ constexpr unsigned latentBytes(bool padded) { return (unsigned)(TN * (padded ? LDC : L) * 2); }
__host__ __device__ constexpr unsigned ropeBytes() { return (unsigned)(TN * RSTRIDE * 2); }
__host__ __device__ constexpr unsigned stageBytes() { return latentBytes(true) + ropeBytes(); }

__device__ __forceinline__ unsigned sa(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void bar_init(uint64_t* b, unsigned n) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(sa(b)), "r"(n)); }
__device__ __forceinline__ void bar_expect(uint64_t* b, unsigned bytes) { asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(sa(b)), "r"(bytes) : "memory"); }
__device__ __forceinline__ void bar_arrive(uint64_t* b) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(sa(b)) : "memory"); }
__device__ __forceinline__ void bar_arrive_remote(uint64_t* b, unsigned rank) {
  asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\nmbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" ::"r"(sa(b)), "r"(rank) : "memory");
}
__device__ __forceinline__ void bar_wait(uint64_t* b, unsigned parity) {
  asm volatile("{\n.reg .pred p;\nW_%=:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W_%=;\n}\n" ::"r"(sa(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk(void* dst, const void* src, unsigned bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(sa(dst)), "l"(src), "r"(bytes), "r"(sa(b)) : "memory");
}
__device__ __forceinline__ void bulk_mc(void* dst, const void* src, unsigned bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], %4;\n" ::"r"(sa(dst)), "l"(src), "r"(bytes), "r"(sa(b)), "h"((uint16_t)3) : "memory");
}
__device__ __forceinline__ void cp16(void* dst, const void* src) { asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa(dst)), "l"(src) : "memory"); }
__device__ __forceinline__ void cp_arrive(uint64_t* b) { asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(sa(b)) : "memory"); }
__device__ __forceinline__ unsigned cluster_rank() { unsigned r; asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r)); return r; }
__device__ __forceinline__ void cluster_sync() { asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }

// c [B, S, L] and r [B, S, ROPE] bf16; block (hb + HBN·split, b) walks rows [split·S/SPLITS, …) of b.
template <Mode M>
__global__ void __launch_bounds__(THREADS, 1) k_copy(const __nv_bfloat16* c, const __nv_bfloat16* r, int S, int stages, int stagger, int hold, unsigned* sink) {
  constexpr bool MC = M == ROWS_MC || M == TILE_MC;
  constexpr bool WHOLE = M == TILE || M == TILE_MC;
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* full = (uint64_t*)(smem + (size_t)stages * stageBytes());
  uint64_t* empty = full + stages;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, hb = blockIdx.x % HBN, split = blockIdx.x / HBN, b = blockIdx.y;
  const int per = S / SPLITS, ntiles = per / TN;
  const int64_t row0 = (int64_t)b * S + (int64_t)split * per;
  const int rot = stagger ? (int)(((int64_t)(split * 37 + b * 11) * 13) % ntiles) : 0;  // the same for both blocks of a pair
  if (threadIdx.x < stages) {
    bar_init(full + threadIdx.x, M == CPASYNC ? 32 * COPY_WARPS : WHOLE ? 1 : COPY_WARPS);
    // Every warp releases a stage (the waiting ones stand for the score warps, which the kernel's refill waits for too).
    bar_init(empty + threadIdx.x, (COPY_WARPS + WAIT_WARPS) * (MC ? 2 : 1));
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  if (MC) cluster_sync();
  else __syncthreads();
  const unsigned rank = MC ? cluster_rank() : 0;

  // Tile t into stage st: this warp's part of the copies, and its expectation of their bytes.
  auto load = [&](int t, int st) {
    unsigned char* base = smem + (size_t)st * stageBytes();
    __nv_bfloat16* sc = (__nv_bfloat16*)base;
    __nv_bfloat16* sr = (__nv_bfloat16*)(base + latentBytes(true));
    const int64_t first = row0 + (int64_t)((t + rot) % ntiles) * TN;
    if (M == CPASYNC) {
      // 16 rows × (256 latent + 32 rope chunks of 16 bytes) over the 256 copy threads.
      for (int i = threadIdx.x; i < TN * (L / 8 + SPAN / 8); i += 32 * COPY_WARPS) {
        const int row = i / (L / 8 + SPAN / 8), k = i % (L / 8 + SPAN / 8);
        if (k < L / 8) cp16(sc + row * LDC + k * 8, c + (first + row) * L + k * 8);
        else cp16(sr + row * RSTRIDE + (k - L / 8) * 8, r + (first + row) * ROPE + hb * SPAN + (k - L / 8) * 8);
      }
      cp_arrive(full + st);
      return;
    }
    if (WHOLE) {
      if (warp != 0) return;
      if (lane == 0) bar_expect(full + st, latentBytes(false) + TN * SPAN * 2);
      __syncwarp();
      if (lane == 0 && (!MC || (unsigned)(t & 1) == rank)) {
        if (MC) bulk_mc(sc, c + first * L, latentBytes(false), full + st);
        else bulk(sc, c + first * L, latentBytes(false), full + st);
      }
      if (lane < TN) bulk(sr + lane * RSTRIDE, r + (first + lane) * ROPE + hb * SPAN, SPAN * 2, full + st);
      return;
    }
    if (lane == 0) bar_expect(full + st, 2 * (L * 2 + SPAN * 2));
    __syncwarp();
    const int row = 2 * warp + (lane & 1);
    if (lane < 2 && (!MC || (unsigned)(row & 1) == rank)) {
      if (MC) bulk_mc(sc + row * LDC, c + (first + row) * L, L * 2, full + st);
      else bulk(sc + row * LDC, c + (first + row) * L, L * 2, full + st);
    } else if (lane == 2 || lane == 3) {
      bulk(sr + row * RSTRIDE, r + (first + row) * ROPE + hb * SPAN, SPAN * 2, full + st);
    }
  };

  unsigned seen = 0;
  if (warp < COPY_WARPS)
    for (int s = 0; s < stages && s < ntiles; s++) load(s, s);
  int stage = 0;
  unsigned phase = 0;
  for (int t = 0; t < ntiles; t++) {
    bar_wait(full + stage, phase);
    seen += ((const unsigned*)(smem + (size_t)stage * stageBytes()))[lane];  // a read of the stage, as a consumer's
    if (hold > 0)
      for (const long long t0 = clock64(); clock64() - t0 < hold;) {}
    __syncwarp();
    if (lane == 0) {
      bar_arrive(empty + stage);
      if (MC && t + stages < ntiles) bar_arrive_remote(empty + stage, rank ^ 1);
    }
    if (warp < COPY_WARPS && t + stages < ntiles) {
      bar_wait(empty + stage, phase);
      load(t + stages, stage);
    }
    if (++stage == stages) {
      stage = 0;
      phase ^= 1;
    }
  }
  if (MC) cluster_sync();  // the peer's remote arrivals and multicast writes land before this block exits
  if (seen == 0x12345678u) sink[0] = seen;
}

// The same tiles read straight into registers: 16-byte loads, all of a tile's in flight per thread.
__global__ void __launch_bounds__(THREADS, 1) k_ldg(const __nv_bfloat16* c, const __nv_bfloat16* r, int S, int stagger, unsigned* sink) {
  const int hb = blockIdx.x % HBN, split = blockIdx.x / HBN, b = blockIdx.y;
  const int per = S / SPLITS, ntiles = per / TN;
  const int64_t row0 = (int64_t)b * S + (int64_t)split * per;
  const int rot = stagger ? (int)(((int64_t)(split * 37 + b * 11) * 13) % ntiles) : 0;
  constexpr int CHUNKS = TN * (L / 8 + SPAN / 8), EACH = (CHUNKS + THREADS - 1) / THREADS;
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (int t = 0; t < ntiles; t++) {
    const int64_t first = row0 + (int64_t)((t + rot) % ntiles) * TN;
    uint4 v[EACH];
#pragma unroll
    for (int j = 0; j < EACH; j++) {
      const int i = threadIdx.x + j * THREADS;
      const int row = i / (L / 8 + SPAN / 8), k = i % (L / 8 + SPAN / 8);
      const __nv_bfloat16* p = k < L / 8 ? c + (first + row) * L + k * 8 : r + (first + row) * ROPE + hb * SPAN + (k - L / 8) * 8;
      v[j] = i < CHUNKS ? __ldg(reinterpret_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < EACH; j++) acc.x ^= v[j].x, acc.y ^= v[j].y, acc.z ^= v[j].z, acc.w ^= v[j].w;
  }
  if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678u) sink[0] = 1;
}

template <Mode M>
void launch(const __nv_bfloat16* c, const __nv_bfloat16* r, int B, int S, int stages, int stagger, int hold, unsigned* sink) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(HBN * SPLITS, B);
  cfg.blockDim = dim3(THREADS);
  cfg.dynamicSmemBytes = (size_t)stages * stageBytes() + 2 * stages * 8;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 2;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  const bool mc = M == ROWS_MC || M == TILE_MC;
  cfg.attrs = mc ? attr : nullptr;
  cfg.numAttrs = mc ? 1 : 0;
  static bool configured = false;
  if (!configured) {
    CK(cudaFuncSetAttribute(k_copy<M>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)cfg.dynamicSmemBytes));
    // One wave, as the kernel's grid is sized: a GPU that holds fewer blocks or pairs at once reads slower here.
    int pairs = 0;
    if (mc && cudaOccupancyMaxActiveClusters(&pairs, k_copy<M>, &cfg) == cudaSuccess && 2 * pairs < HBN * SPLITS * B)
      printf("(%s: %d pairs at once for %d blocks: more than one wave)\n", NAMES[M], pairs, HBN * SPLITS * B);
    configured = true;
  }
  CK(cudaLaunchKernelEx(&cfg, k_copy<M>, c, r, S, stages, stagger, hold, sink));
}
}  // namespace

int main(int argc, char** argv) {
  const int B = argc > 1 ? atoi(argv[1]) : 8, S = argc > 2 ? atoi(argv[2]) : 16384, stages = argc > 3 ? atoi(argv[3]) : 3, stagger = argc > 4 ? atoi(argv[4]) : 0, hold = argc > 5 ? atoi(argv[5]) : 0;
  const char* modes = argc > 6 ? argv[6] : "all";
  if (S % (SPLITS * TN) != 0 || stages < 1 || (size_t)stages * stageBytes() + 2 * stages * 8 > 227 * 1024) {
    fprintf(stderr, "CTX must be a multiple of %d and STAGES × %u bytes must fit 227 KB\n", SPLITS * TN, stageBytes());
    return 2;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const size_t cN = (size_t)B * S * L, rN = (size_t)B * S * ROPE;
  __nv_bfloat16 *c, *r;
  unsigned* sink;
  CK(cudaMalloc(&c, cN * 2));
  CK(cudaMalloc(&r, rN * 2));
  CK(cudaMalloc(&sink, 4));
  CK(cudaMemset(c, 1, cN * 2));
  CK(cudaMemset(r, 1, rN * 2));
  const double bytes = (double)(cN + rN) * 2;
  if (prop.multiProcessorCount < HBN * SPLITS * B) printf("(%d blocks on %d SMs: more than one wave)\n", HBN * SPLITS * B, prop.multiProcessorCount);
  printf("%s, %d SMs; %d sequences × %d rows: %.1f MB of latent and rope rows, %d stages of %u bytes, %s, each stage held %d cycles\n", prop.name, prop.multiProcessorCount, B, S, bytes / 1e6, stages, stageBytes(), stagger ? "each split from its own starting tile" : "each split from its first tile", hold);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const int REPS = 20;
  for (int m = 0; m <= LDG; m++) {
    if (strcmp(modes, "all") != 0) {
      // A comma-separated list of mode names: skip the others.
      const size_t n = strlen(NAMES[m]);
      bool listed = false;
      for (const char* p = modes; (p = strstr(p, NAMES[m])) != nullptr; p += n)
        if ((p == modes || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) listed = true;
      if (!listed) continue;
    }
    auto run = [&]() {
      switch ((Mode)m) {
        case ROWS: launch<ROWS>(c, r, B, S, stages, stagger, hold, sink); break;
        case ROWS_MC: launch<ROWS_MC>(c, r, B, S, stages, stagger, hold, sink); break;
        case TILE: launch<TILE>(c, r, B, S, stages, stagger, hold, sink); break;
        case TILE_MC: launch<TILE_MC>(c, r, B, S, stages, stagger, hold, sink); break;
        case CPASYNC: launch<CPASYNC>(c, r, B, S, stages, stagger, hold, sink); break;
        case LDG: k_ldg<<<dim3(HBN * SPLITS, B), THREADS>>>(c, r, S, stagger, sink); CK(cudaGetLastError()); break;
      }
    };
    run();
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(e0));
    for (int i = 0; i < REPS; i++) run();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    ms /= REPS;
    printf("| %s | %.3f ms | %.2f TB/s |\n", NAMES[m], ms, bytes / (ms * 1e-3) / 1e12);
  }
  return 0;
}
