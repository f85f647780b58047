// Decode's matrix products: y = x·wᵀ for a few activation rows against bf16 weights, in one pass over
// the weights. At one to a few rows cuBLAS picks split-K GEMMs (a second kernel sums the splits) or
// narrow tiles that read the weights at 35–70% of the HBM bandwidth (ncu on a llama2-7b decode step),
// and linear first rounds x into scratch with a kernel of its own: three launches where this is one.
// The numbers are those of the cuBLAS route: x rounded to bf16, products summed in float32 (in
// another order, so not the same bits). Two kernels: up to 4 rows one of float32 FMAs (below), 5 to
// 32 rows one of tensor-core MMAs (further below, "Tensor-core rows"); MHA2MLA_GEMV_ROWS bounds both
// (default 4: the MMA kernel is opt-in, see max_rows).
//
// Problems p = 0 … P−1 (head_linear's KV groups; linear has one) share the shapes: rows r of problem p
// are (t, j) = (r / hpg, r % hpg), the input row x[t, p·hpg + j, :] and output row y[t, p·hpg + j, :]
// of x [T, H, K] and y [T, H, N] with H = P·hpg; w [P, N, K].
//
// FMA kernel: a block owns CB output columns of one problem and splits K, in 8-element (16-byte)
// chunks, over its warps and lanes: chunk c goes to lane c mod (warps·32), so a warp reads 512
// contiguous bytes of each row per step. Each lane issues all its weight loads of UNROLL steps before
// it uses any, so a block has CB·UNROLL 16-byte loads per thread in flight and most matrices are read
// in one or two memory round trips (the first version walked K in one warp per column, a round trip
// per step: 1.9 TB/s on 4096 × 4096). The rows' x values are loaded once per chunk for all CB columns.
// Sums: shuffles within a warp, then the warps' partial sums in order through shared memory
// (deterministic).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include "bf16_rows.cuh"
#include "common.cuh"
#include "mma.cuh"

using mla::ctx;

namespace {
constexpr int CB = 4;         // output columns per block
constexpr int MAX_WARPS = 8;  // warps per block (fewer for short rows: each lane gets ≥ 2 chunks)
constexpr int MAX_ROWS = 4;   // rows per problem this kernel takes

using mla_bf16::aligned16;
using mla_bf16::load_weights16;
using mla_bf16::store_y;

__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int e = 0; e < 8; e++) v[e] = __bfloat162float(__float2bfloat16(f[e]));  // rounded as linear's narrow rounds
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* v) { mla_bf16::load_row<8>(p, v); }

// acc += Σ_e w_e · x_e over one chunk (w: 8 bf16 in a uint4).
__device__ __forceinline__ float dot8(uint4 w, const float* x, float acc) {
  float f[8];
  mla_bf16::unpack8(w, f);
#pragma unroll
  for (int e = 0; e < 8; e++) acc = fmaf(f[e], x[e], acc);
  return acc;
}


// One block's CB output columns from n0 of problem p. R: rows per problem rounded up.
template <int R, typename XT>
__device__ __forceinline__ void gemv_block(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int rows, int hpg, int H, int K, int N, int p, int n0) {
  constexpr int UNROLL = R <= 2 ? 4 : 2;  // chunks per lane per trip: CB·UNROLL loads in flight
  __shared__ float part[MAX_WARPS][CB * R];
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int C = K / 8, stride = warps * 32;
  const __nv_bfloat16* wp = w + (int64_t)p * N * K;
  const __nv_bfloat16* wr[CB];
#pragma unroll
  for (int j = 0; j < CB; j++) wr[j] = wp + (int64_t)min(n0 + j, N - 1) * K;  // columns past N re-read N − 1; not written
  const XT* xr[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int rr = r < rows ? r : 0;  // rows past the last repeat row 0; not written
    xr[r] = x + ((int64_t)(rr / hpg) * H + p * hpg + rr % hpg) * K;
  }
  float acc[CB][R];
#pragma unroll
  for (int j = 0; j < CB; j++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[j][r] = 0.f;
  for (int c0 = warp * 32 + lane; c0 < C; c0 += stride * UNROLL) {
    uint4 wv[UNROLL][CB];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int c = c0 + u * stride;
#pragma unroll
      for (int j = 0; j < CB; j++) wv[u][j] = c < C ? load_weights16(wr[j] + c * 8) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int c = c0 + u * stride;
      if (c < C) {
#pragma unroll
        for (int r = 0; r < R; r++) {
          float xv[8];
          load8(xr[r] + c * 8, xv);
#pragma unroll
          for (int j = 0; j < CB; j++) acc[j][r] = dot8(wv[u][j], xv, acc[j][r]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < CB; j++)
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
      for (int off = 16; off; off >>= 1) acc[j][r] += __shfl_xor_sync(0xffffffffu, acc[j][r], off);
      if (lane == 0) part[warp][j * R + r] = acc[j][r];
    }
  __syncthreads();
  const int t = threadIdx.x, j = t / R, r = t % R;
  if (t < CB * R && r < rows && n0 + j < N) {
    float sum = 0.f;
    for (int v = 0; v < warps; v++) sum += part[v][t];
    store_y(y, ybf16, ((int64_t)(r / hpg) * H + p * hpg + r % hpg) * N + n0 + j, sum);
  }
}

// Grid: x = column blocks of CB, y = problem; blockDim.x = 32·warps.
template <int R, typename XT>
__global__ void __launch_bounds__(MAX_WARPS * 32) k_gemv_bf16(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int rows, int hpg, int H, int K, int N) {
  gemv_block<R, XT>(x, w, y, ybf16, rows, hpg, H, K, N, blockIdx.y, blockIdx.x * CB);
}

// Several matrices against the same x (one problem each, the same K): a layer's projections of one
// normed input in one launch, so the small ones (MLA's rope keys, 512 rows at llama2-7b) do not each
// run a grid too small to fill the GPU. Grid x: the matrices' column blocks one after another.
constexpr int MAX_MANY = 4;
struct ManyMats {
  const __nv_bfloat16* w[MAX_MANY];
  void* y[MAX_MANY];
  bool ybf16[MAX_MANY];
  int N[MAX_MANY];
  int firstBlock[MAX_MANY + 1];
  int count;
};
// The matrix that block `b` works on, and its first block. Picked by constant indices: a runtime index
// into the kernel's ManyMats had every thread copy its 112 bytes to local memory first.
struct ManyPick {
  const __nv_bfloat16* w;
  void* y;
  bool ybf16;
  int N, first;
};
__device__ __forceinline__ ManyPick many_pick(const ManyMats& m, int b) {
  ManyPick s{m.w[0], m.y[0], m.ybf16[0], m.N[0], 0};
#pragma unroll
  for (int j = 1; j < MAX_MANY; j++)
    if (j < m.count && b >= m.firstBlock[j]) s = ManyPick{m.w[j], m.y[j], m.ybf16[j], m.N[j], m.firstBlock[j]};
  return s;
}
template <int R, typename XT>
__global__ void __launch_bounds__(MAX_WARPS * 32) k_gemv_bf16_many(const XT* x, ManyMats m, int rows, int K) {
  const ManyPick s = many_pick(m, (int)blockIdx.x);
  gemv_block<R, XT>(x, s.w, s.y, s.ybf16, rows, 1, 1, K, s.N, 0, ((int)blockIdx.x - s.first) * CB);
}

// Warps per block: as few as cover a row's chunks in one trip of UNROLL chunks per lane (so no load
// slot idles; 4096-wide rows take 4 warps at one or two rows), at most MAX_WARPS (longer rows take
// several trips). Fewer warps per block leave room for more blocks per SM.
template <int R, typename XT>
mla_status launch_rows(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  constexpr int UNROLL = R <= 2 ? 4 : 2;  // as in the kernel
  const int64_t chunks = K / 8;
  const int warps = (int)std::max<int64_t>(1, std::min<int64_t>(MAX_WARPS, (chunks + 32 * UNROLL - 1) / (32 * UNROLL)));
  const dim3 grid((unsigned)((N + CB - 1) / CB), (unsigned)P), block(32 * warps);
  k_gemv_bf16<R, XT><<<grid, block, 0, ctx()->stream>>>(x, w, y, ybf16, (int)rows, (int)hpg, (int)(P * hpg), (int)K, (int)N);
  KERNEL_CHECK();
  return MLA_OK;
}

template <int R, typename XT>
mla_status launch_many_rows(const XT* x, const ManyMats& m, int64_t rows, int64_t K) {
  constexpr int UNROLL = R <= 2 ? 4 : 2;
  const int64_t chunks = K / 8;
  const int warps = (int)std::max<int64_t>(1, std::min<int64_t>(MAX_WARPS, (chunks + 32 * UNROLL - 1) / (32 * UNROLL)));
  k_gemv_bf16_many<R, XT><<<(unsigned)m.firstBlock[m.count], 32 * warps, 0, ctx()->stream>>>(x, m, (int)rows, (int)K);
  KERNEL_CHECK();
  return MLA_OK;
}

template <typename XT>
mla_status launch_many(const XT* x, const ManyMats& m, int64_t rows, int64_t K) {
  if (rows == 1) return launch_many_rows<1>(x, m, rows, K);
  if (rows == 2) return launch_many_rows<2>(x, m, rows, K);
  return launch_many_rows<4>(x, m, rows, K);
}

template <typename XT>
mla_status launch(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  if (rows == 1) return launch_rows<1>(x, w, y, ybf16, P, rows, hpg, K, N);
  if (rows == 2) return launch_rows<2>(x, w, y, ybf16, P, rows, hpg, K, N);
  return launch_rows<4>(x, w, y, ybf16, P, rows, hpg, K, N);
}

// ---- Tensor-core rows (5 to 32 per problem) ----
// At 8 rows the FMA kernel would spend 64 FMAs per 16-byte weight load, near the SMs' FP32 issue rate at
// HBM speed; an m16n8k16 MMA does a 16-column × 16-k × 8-row block in one instruction. A sum over k may
// visit k in any order, so a lane's one 16-byte chunk of a column (8 consecutive k) serves as its A
// fragment slots of two MMAs, no ldmatrix or shuffle: lane (g, t) = (lane / 4, lane % 4) of a warp step
// over k0 … k0+31 takes columns g and g+8 at k0+8t … k0+8t+7, register pairs u0 … u3; MMA 0 takes u0 for
// the fragment's k slots {2t, 2t+1} and u1 for {2t+8, 2t+9}, MMA 1 takes u2 and u3. Its B fragment (x as
// k × rows) needs the same k at the same slots: row g's x at k0+8t … k0+8t+7 (f32 x: rounded to bf16 as
// read, as linear's cuBLAS route rounds it).
// Loads: each warp streams its k steps through its own ring of STAGES rounds (UNROLL steps each) in
// shared memory by cp.async, weights past L1, x kept in L1 (every block of an SM reads it). A lane
// reads back only the slots it filled, so the ring needs no barrier. The first version loaded into
// registers, a round at a time: 2.13 TB/s on a llama2-7b step's large products under ncu against 2.39
// for this one, the same GPU (docs/benchmarks.md, thirty-fourth session); ptxas is free to hold fewer
// register loads in flight than the source issues, and did (40–80 registers).
// A block has kw warps along K for each of its 16-column tiles (kw of K alone: warp w takes steps w,
// w+kw, …, so a tile's block reads 64·kw contiguous bytes of each column per step) and as many tiles as
// fill it; a tile's kw partial sums are added in warp order through shared memory, so a column's sum
// depends on K and the row count alone (linear_many gives linear's bits).
constexpr int MMA_MAX_ROWS = 32;
// Tuning builds (bench/gemv-variants.sh builds and times them; never a default until measured):
// GEMV_MMA_STAGES, GEMV_MMA_UNROLL, GEMV_MMA_WARPS as below; GEMV_MMA_NT 16-column tiles per warp
// (each x fragment feeds NT of them: x bytes per weight byte ÷ NT); GEMV_MMA_CARVEOUT the preferred
// shared-memory carveout in percent (−1: the driver's choice), which sets how much L1 the x reads
// keep; GEMV_MMA_XCG=1 reads x past L1.
#ifndef GEMV_MMA_STAGES
#define GEMV_MMA_STAGES 4
#endif
#ifndef GEMV_MMA_UNROLL
#define GEMV_MMA_UNROLL 2
#endif
#ifndef GEMV_MMA_WARPS
#define GEMV_MMA_WARPS 4
#endif
#ifndef GEMV_MMA_NT
#define GEMV_MMA_NT 1
#endif
#ifndef GEMV_MMA_CARVEOUT
#define GEMV_MMA_CARVEOUT -1
#endif
#ifndef GEMV_MMA_XCG
#define GEMV_MMA_XCG 0
#endif
constexpr int UNROLL_MMA = GEMV_MMA_UNROLL, STAGES = GEMV_MMA_STAGES, MMA_WARPS = GEMV_MMA_WARPS;  // a warp has STAGES − 1 rounds (6 KB of weights at the defaults) in flight while it computes one
constexpr int NT = GEMV_MMA_NT;  // 16-column tiles per warp

__device__ __forceinline__ void cp16_weights(uint4* s, const __nv_bfloat16* g, bool ok) {  // L2 only, as load_weights16
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(s)), "l"(g), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp16_x(uint4* s, const char* g, bool ok) {  // kept in L1
  if (GEMV_MMA_XCG) asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(s)), "l"(g), "r"(ok ? 16 : 0) : "memory");
  else asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(s)), "l"(g), "r"(ok ? 16 : 0) : "memory");
}
// cp.async.wait_group with a memory clobber: the ring's plain shared-memory reads must not move above it.
template <int N>
__device__ __forceinline__ void ring_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Chunks (16 bytes) per lane per step: two weight columns per tile and each row block's x (f32 x: two).
template <int NB, typename XT>
__host__ __device__ constexpr int chunks_per_step() { return 2 * NT + NB * (int)(sizeof(XT) / 2); }

// One block's columns from n0 of problem p for rows < 8·NB: its warps form kw × (blockDim / 32 / kw).
template <int NB, typename XT>
__device__ __forceinline__ void gemv_mma_block(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int rows, int hpg, int H, int K, int N, int p, int n0, int kw) {
  constexpr int XW = sizeof(XT) / 2, C = chunks_per_step<NB, XT>(), WC = 2 * NT;
  extern __shared__ uint4 ring_all[];
  const int wid = threadIdx.x >> 5, warp = wid % kw, tile = wid / kw, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int steps = (K + 31) / 32, nt = n0 + 16 * NT * tile;
  const __nv_bfloat16* wr[WC];
#pragma unroll
  for (int i = 0; i < WC; i++) wr[i] = w + ((int64_t)p * N + min(nt + 8 * i + g, N - 1)) * K + 8 * t;  // columns past N re-read N − 1; not written
  const XT* xr[NB];
#pragma unroll
  for (int b = 0; b < NB; b++) {
    const int r = 8 * b + g < rows ? 8 * b + g : 0;  // rows past the last repeat row 0; not written
    xr[b] = x + ((int64_t)(r / hpg) * H + p * hpg + r % hpg) * K + 8 * t;
  }
  float acc[NT][NB][4];
#pragma unroll
  for (int q = 0; q < NT; q++)
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
      for (int c = 0; c < 4; c++) acc[q][b][c] = 0.f;
  uint4* ring = ring_all + (size_t)wid * STAGES * UNROLL_MMA * C * 32;
  const int rounds = warp < steps ? (steps - warp + UNROLL_MMA * kw - 1) / (UNROLL_MMA * kw) : 0;
  auto issue = [&](int r) {
    if (r < rounds) {
      uint4* st = ring + (r % STAGES) * UNROLL_MMA * C * 32;
#pragma unroll
      for (int u = 0; u < UNROLL_MMA; u++) {
        const int k = (warp + (r * UNROLL_MMA + u) * kw) * 32;
        const bool ok = k + 8 * t < K;  // zeros past K (K is a multiple of 8: a lane's chunk is all in or all out)
#pragma unroll
        for (int i = 0; i < WC; i++) cp16_weights(st + (u * C + i) * 32 + lane, ok ? wr[i] + k : w, ok);  // nothing read when !ok: any mapped address
#pragma unroll
        for (int b = 0; b < NB; b++)
#pragma unroll
          for (int h = 0; h < XW; h++) cp16_x(st + (u * C + WC + b * XW + h) * 32 + lane, ok ? reinterpret_cast<const char*>(xr[b] + k) + 16 * h : reinterpret_cast<const char*>(x), ok);
      }
    }
    mla_mma::cp_commit();  // empty groups past the last round keep the wait count below uniform
  };
#pragma unroll
  for (int r = 0; r < STAGES - 1; r++) issue(r);
  for (int r = 0; r < rounds; r++) {
    issue(r + STAGES - 1);
    ring_wait<STAGES - 1>();
    const uint4* st = ring + (r % STAGES) * UNROLL_MMA * C * 32;
#pragma unroll
    for (int u = 0; u < UNROLL_MMA; u++) {
      uint4 xv[NB];
#pragma unroll
      for (int b = 0; b < NB; b++) {
        if constexpr (XW == 1) {
          xv[b] = st[(u * C + WC + b) * 32 + lane];
        } else {
          const uint4 e = st[(u * C + WC + 2 * b) * 32 + lane], f = st[(u * C + WC + 1 + 2 * b) * 32 + lane];
          xv[b] = make_uint4(mla_mma::pack(__uint_as_float(e.x), __uint_as_float(e.y)), mla_mma::pack(__uint_as_float(e.z), __uint_as_float(e.w)),
                             mla_mma::pack(__uint_as_float(f.x), __uint_as_float(f.y)), mla_mma::pack(__uint_as_float(f.z), __uint_as_float(f.w)));
        }
      }
#pragma unroll
      for (int q = 0; q < NT; q++) {
        const uint4 lo = st[(u * C + 2 * q) * 32 + lane], hi = st[(u * C + 2 * q + 1) * 32 + lane];  // columns g and g + 8 of tile q
        const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
        for (int b = 0; b < NB; b++) {
          mla_mma::mma(acc[q][b], a0, xv[b].x, xv[b].y);
          mla_mma::mma(acc[q][b], a1, xv[b].z, xv[b].w);
        }
      }
    }
  }
  ring_wait<0>();
  // The warp's partial sums go where its ring was (its copies have landed and, past the barrier, every
  // lane's reads of it are done): [NT·NB·4][32] floats, within the ring's STAGES·UNROLL·C·32 chunks.
  static_assert(NT * NB * 4 * 32 * 4 <= STAGES * UNROLL_MMA * C * 32 * 16, "partial sums fit the ring");
  __syncwarp();
  float* part = reinterpret_cast<float*>(ring);
#pragma unroll
  for (int q = 0; q < NT; q++)
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
      for (int c = 0; c < 4; c++) part[((q * NB + b) * 4 + c) * 32 + lane] = acc[q][b][c];
  __syncthreads();
  // Value (j, l) of warp group ct: tile q = j / (4·NB), row block b = j / 4 % NB, accumulator c = j % 4
  // of lane l = (g, t): column 16q + g + 8·(c / 2), row 8b + 2t + c % 2; summed over the group's kw
  // warps in order.
  constexpr int V = NT * NB * 4 * 32;
  const size_t ringFloats = (size_t)STAGES * UNROLL_MMA * C * 32 * 4;
  const float* parts = reinterpret_cast<const float*>(ring_all);
  for (int v = threadIdx.x; v < (int)(blockDim.x >> 5) / kw * V; v += blockDim.x) {
    const int ct = v / V, j = v % V / 32, l = v % 32, c = j % 4, b = j / 4 % NB, q = j / (4 * NB);
    const int n = n0 + 16 * (NT * ct + q) + (l >> 2) + 8 * (c >> 1), r = 8 * b + 2 * (l & 3) + (c & 1);
    if (r < rows && n < N) {
      float sum = 0.f;
      for (int w2 = 0; w2 < kw; w2++) sum += parts[(ct * kw + w2) * ringFloats + j * 32 + l];
      store_y(y, ybf16, ((int64_t)(r / hpg) * H + p * hpg + r % hpg) * N + n, sum);
    }
  }
}

// Grid: x = column blocks, y = problem; blockDim.x = 32·kw·tiles.
template <int NB, typename XT>
__global__ void __launch_bounds__(MMA_WARPS * 32) k_gemv_mma(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int rows, int hpg, int H, int K, int N, int kw) {
  gemv_mma_block<NB, XT>(x, w, y, ybf16, rows, hpg, H, K, N, blockIdx.y, blockIdx.x * 16 * NT * ((int)(blockDim.x >> 5) / kw), kw);
}

template <int NB, typename XT>
__global__ void __launch_bounds__(MMA_WARPS * 32) k_gemv_mma_many(const XT* x, ManyMats m, int rows, int K, int kw) {
  const ManyPick s = many_pick(m, (int)blockIdx.x);
  gemv_mma_block<NB, XT>(x, s.w, s.y, s.ybf16, rows, 1, 1, K, s.N, 0, ((int)blockIdx.x - s.first) * 16 * NT * ((int)(blockDim.x >> 5) / kw), kw);
}

// Warps along K: as few as give each warp at least one round, at most MMA_WARPS; a function of K alone.
int mma_k_warps(int64_t K) { return (int)std::max<int64_t>(1, std::min<int64_t>(MMA_WARPS, (K + 32 * UNROLL_MMA - 1) / (32 * UNROLL_MMA))); }
// Column tiles per block: what fills it to MMA_WARPS warps, never more than N has (N = 0: linear_many's
// layout, the same for every matrix of a launch).
int mma_tiles(int64_t K, int64_t N) {
  const int fill = MMA_WARPS / mma_k_warps(K);
  return N ? (int)std::max<int64_t>(1, std::min<int64_t>(fill, (N + 16 * NT - 1) / (16 * NT))) : fill;
}

// The rings' shared memory for `warps` warps (f32 x at 32 rows, 4 warps: 160 KB).
size_t ring_bytes(int chunks, int warps) { return (size_t)warps * STAGES * UNROLL_MMA * chunks * 32 * sizeof(uint4); }
// Raises the kernel's dynamic shared memory limit, once per instantiation, to what its largest block
// (MMA_WARPS warps) needs: a limit set per call would shrink under a small call, below what a recorded
// graph node of an earlier, larger call was captured with.
template <int NB, typename XT, bool MANY>
mla_status allow_rings() {
  static bool done = false;
  if (!done) {
    const int bytes = (int)ring_bytes(chunks_per_step<NB, XT>(), MMA_WARPS);
    const void* k = MANY ? (const void*)k_gemv_mma_many<NB, XT> : (const void*)k_gemv_mma<NB, XT>;
    CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    if (GEMV_MMA_CARVEOUT >= 0) CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout, GEMV_MMA_CARVEOUT));
    done = true;
  }
  return MLA_OK;
}
// Whether the rows' largest block fits the GPU's shared memory per block (its ring, which also takes the partial sums): every
// instantiation does on sm_90 (227 KB), not f32 x at 17–32 rows on sm_80 (163 KB) nor 9–32 rows on
// GPUs with 99 KB; those products go to cuBLAS.
bool rings_fit(int64_t rows, bool x_bf16) {
  static int optin = -1;
  if (optin < 0 && cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx()->device) != cudaSuccess) {
    (void)cudaGetLastError();
    optin = 0;  // unknown: the MMA kernel takes nothing
  }
  const int NB = rows <= 8 ? 1 : rows <= 16 ? 2 : 4;
  return ring_bytes(2 * NT + NB * (x_bf16 ? 1 : 2), MMA_WARPS) <= (size_t)optin;
}

template <int NB, typename XT>
mla_status launch_mma_rows(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  const int kw = mma_k_warps(K), tiles = mma_tiles(K, N);
  const dim3 grid((unsigned)((N + 16 * NT * tiles - 1) / (16 * NT * tiles)), (unsigned)P), block(32 * kw * tiles);
  if (mla_status e = allow_rings<NB, XT, false>()) return e;
  k_gemv_mma<NB, XT><<<grid, block, ring_bytes(chunks_per_step<NB, XT>(), kw * tiles), ctx()->stream>>>(x, w, y, ybf16, (int)rows, (int)hpg, (int)(P * hpg), (int)K, (int)N, kw);
  KERNEL_CHECK();
  return MLA_OK;
}

// m.firstBlock laid out with columns_per_block(rows, K).
template <int NB, typename XT>
mla_status launch_mma_many_rows(const XT* x, const ManyMats& m, int64_t rows, int64_t K) {
  const int kw = mma_k_warps(K), warps = kw * mma_tiles(K, 0);
  if (mla_status e = allow_rings<NB, XT, true>()) return e;
  k_gemv_mma_many<NB, XT><<<(unsigned)m.firstBlock[m.count], 32 * warps, ring_bytes(chunks_per_step<NB, XT>(), warps), ctx()->stream>>>(x, m, (int)rows, (int)K, kw);
  KERNEL_CHECK();
  return MLA_OK;
}

// Rows per problem from which the tensor-core kernel runs: MHA2MLA_GEMV_MMA_ROWS (1–33, 33 = never),
// read at each call; default 5. Rows in 5 … that count − 1 go to cuBLAS (gemv_takes).
int64_t mma_from() {
  const char* v = getenv("MHA2MLA_GEMV_MMA_ROWS");
  return v && *v ? std::max<int64_t>(1, std::min<int64_t>(MMA_MAX_ROWS + 1, atoll(v))) : MAX_ROWS + 1;
}
bool mma_takes(int64_t rows) { return rows >= mma_from(); }

template <typename XT>
mla_status launch_any(const XT* x, const __nv_bfloat16* w, void* y, bool ybf16, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  if (!mma_takes(rows)) return launch(x, w, y, ybf16, P, rows, hpg, K, N);
  if (rows <= 8) return launch_mma_rows<1>(x, w, y, ybf16, P, rows, hpg, K, N);
  if (rows <= 16) return launch_mma_rows<2>(x, w, y, ybf16, P, rows, hpg, K, N);
  return launch_mma_rows<4>(x, w, y, ybf16, P, rows, hpg, K, N);
}

template <typename XT>
mla_status launch_many_any(const XT* x, const ManyMats& m, int64_t rows, int64_t K) {
  if (!mma_takes(rows)) return launch_many(x, m, rows, K);
  if (rows <= 8) return launch_mma_many_rows<1>(x, m, rows, K);
  if (rows <= 16) return launch_mma_many_rows<2>(x, m, rows, K);
  return launch_mma_many_rows<4>(x, m, rows, K);
}

// Output columns per block of the kernel that takes `rows`: how linear_many lays out its grid.
int columns_per_block(int64_t rows, int64_t K) { return mma_takes(rows) ? 16 * NT * mma_tiles(K, 0) : CB; }


// Rows per problem up to which these kernels run instead of cuBLAS: MHA2MLA_GEMV_ROWS (0–32; 0 =
// never), read at each call; default 16: the FMA kernel to 4 rows, the tensor-core kernel from 5 (batch 5–16
// decode). Measured (docs/benchmarks.md, seventeenth session): one row of 4096 → 4096 at 1.75 TB/s against
// cuBLAS's 1.19, 4096 → 11008 at 3.36 against 3.08; a recorded MLA decode step of the llama2-7b shape +7% at
// batch 1 (4k and 16k context). The first version (one warp per column walking K) lost. The tensor-core
// kernel reads a llama2-7b step's products at batch 8 in 8% less time than cuBLAS under ncu (no split-K
// reductions); recorded batch-8 MLA steps gained 0.3–7.5% with it in every A/B pair of the thirty-seventh
// (H100) and thirty-eighth (H200) sessions, MHA steps −3% to +0.5%, so it became the default there (the
// thirty-fourth session's runs, before its review fixes, had MLA at −5% to +3%).
constexpr int DEFAULT_ROWS = 16;
int64_t max_rows() {
  const char* v = getenv("MHA2MLA_GEMV_ROWS");
  return v && *v ? std::max<int64_t>(0, std::min<int64_t>(MMA_MAX_ROWS, atoll(v))) : DEFAULT_ROWS;
}
}  // namespace

namespace mla {
// Whether gemv_bf16 takes a problem: rows ≤ the limit, K a multiple of 8 (16-byte steps), 16-byte
// aligned rows, sizes within 32-bit indices.
bool gemv_takes(const void* x, bool x_bf16, const void* w, int64_t rows, int64_t K, int64_t N, int64_t P) {
  return rows >= 1 && rows <= max_rows() && (mma_takes(rows) ? rings_fit(rows, x_bf16) : rows <= MAX_ROWS) && K > 0 && K % 8 == 0 && N > 0 && P > 0 && P <= 65535 && N * K < INT32_MAX && aligned16(x) && aligned16(w) && (x_bf16 || K % 4 == 0);
}

// y [T, P·hpg, N] = x [T, P·hpg, K] · w[p]ᵀ per problem p (rows = T·hpg; see gemv_takes). x and y f32 or bf16.
mla_status gemv_bf16(const void* x, bool x_bf16, const __nv_bfloat16* w, void* y, bool y_bf16, int64_t P, int64_t rows, int64_t hpg, int64_t K, int64_t N) {
  return x_bf16 ? launch_any((const __nv_bfloat16*)x, w, y, y_bf16, P, rows, hpg, K, N) : launch_any((const float*)x, w, y, y_bf16, P, rows, hpg, K, N);
}
}  // namespace mla

// y_i [M, N_i] = x [M, K] · w_i [N_i, K]ᵀ for i < count ≤ 4, bf16 weights, in one launch; M rows as gemv_takes.
// Each y f32, or bf16 (rounded as the product that reads it would round it).
// Returns MLA_ERR_ARGUMENT (nothing launched) where gemv_takes would refuse one of them: the caller
// then runs them one linear each.
extern "C" mla_status mla_cuda_linear_many(const mla_cuda_buf* x, const mla_cuda_buf* const* ws, mla_cuda_buf* const* ys, int32_t count, int64_t M, int64_t K) {
  NEED_CTX();
  MLA_CHECK(x && ws && ys && count >= 1 && count <= MAX_MANY && (x->dtype == MLA_F32 || x->dtype == MLA_BF16) && x->n == M * K, "linear_many: x [M, K] f32 or bf16 and 1 to 4 weights");
  ManyMats m{};
  m.count = count;
  m.firstBlock[0] = 0;
  const int cpb = columns_per_block(M, K);  // every matrix's, and the kernel launch_many_any picks lays them out so
  for (int i = 0; i < count; i++) {
    const int64_t N = ws[i] ? ws[i]->n / std::max<int64_t>(K, 1) : 0;
    MLA_CHECK(ws[i] && ys[i] && ws[i]->dtype == MLA_BF16 && K > 0 && ws[i]->n == N * K && (ys[i]->dtype == MLA_F32 || ys[i]->dtype == MLA_BF16) && ys[i]->n == M * N, "linear_many: each w bf16 [N, K] and y f32 or bf16 [M, N]");
    if (!mla::gemv_takes(x->ptr, x->dtype == MLA_BF16, ws[i]->ptr, M, K, N, 1)) return MLA_FAIL(MLA_ERR_ARGUMENT, "linear_many: a product the one-pass kernel does not take");
    m.w[i] = (const __nv_bfloat16*)ws[i]->ptr;
    m.y[i] = ys[i]->ptr;
    m.ybf16[i] = ys[i]->dtype == MLA_BF16;
    m.N[i] = (int)N;
    m.firstBlock[i + 1] = m.firstBlock[i] + (int)((N + cpb - 1) / cpb);
  }
  return x->dtype == MLA_BF16 ? launch_many_any((const __nv_bfloat16*)x->ptr, m, M, K) : launch_many_any((const float*)x->ptr, m, M, K);
}
