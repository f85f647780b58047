// Splitting decode attention along the context (FlashDecoding), shared by the fused latent kernel
// (latent_decode.cu) and the MHA kernel (mha_decode.cu): a per-sequence table, the visible range a
// decode graph recomputes from the step's positions, how many splits a sequence takes, and the merge
// of the splits' partial outputs by their log2-sum-exp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>
#include "common.cuh"
#include "bf16_rows.cuh"

namespace {
constexpr int TN = 16;  // cached rows per tile
constexpr float LOG2E = 1.4426950408889634f;  // softmax runs in base 2 (exp2f)
// A split writes and the merge reads back its partial output (16·L floats per head block for the
// latent kernel, about two tiles of bf16 latent): each split gets at least 8 tiles so that costs ≤ 25% of
// its reads. The latent kernel at batch 1 takes 4: its 8-tile splits fill only 64 of the H200's 132 SMs
// at 4k context, and 4 measured 0.045 → 0.038 ms per layer call and +4% tokens/s on a recorded llama2-7b
// step (docs/benchmarks.md, eighteenth session; 8 stays at batch 8, where 4 lost 2–3%).
// MHA2MLA_DECODE_MIN_TILES (1–64) sets one minimum for every call instead. Read once per process: a
// recorded decode graph keeps the value it was recorded with, and an eager step must split alike for
// the two to give the same bits.
constexpr int MIN_TILES_PER_SPLIT = 8;
constexpr int MIN_TILES_PER_SPLIT_LATENT_B1 = 4;
inline int min_tiles_per_split(int fallback) {
  static const int n = [] {
    const char* v = getenv("MHA2MLA_DECODE_MIN_TILES");
    if (!v || !*v) return 0;  // unset: the caller's default
    const int m = atoi(v);
    return m < 1 ? 1 : m > 64 ? 64 : m;
  }();
  return n ? n : fallback;
}

using mla::sm_count;

struct Seq {
  const __nv_bfloat16* c;   // latent rows [.., L] (MHA: key rows [.., Hkv, Dh])
  const __nv_bfloat16* kr;  // rope rows [.., Hkv, Dr] (MHA: value rows [.., Hkv, Dv])
  int64_t lo;      // first visible key
  int64_t n;       // visible keys
};

// Sequence b's entry; in a decode graph (pos: the step's positions on the device) its visible range
// follows the position, as the host computes it for an eager call.
__device__ __forceinline__ Seq seq_of(const Seq* seqs, const int32_t* pos, int64_t window, int b) {
  Seq s = seqs[b];
  if (pos) {
    const int64_t S = (int64_t)pos[b] + 1;
    s.lo = window > 0 && S > window ? S - window : 0;
    s.n = S - s.lo;
  }
  return s;
}

// Splits of a sequence of n visible keys: each ≥ minTiles tiles, at most the grid's. A function of n
// alone (for one call's cap and minimum), so a graph (whose grid has the most splits the batch can use)
// and an eager call (the fewest its longest sequence needs) split a sequence alike and give the same bits.
__host__ __device__ __forceinline__ int splits_of(int64_t n, int cap, int minTiles) {
  const int64_t tiles = (n + TN - 1) / TN, want = tiles / minTiles;
  return (int)(want < 1 ? 1 : want < cap ? want : cap);
}

// A decode attention's output o [B, H, width]: float32, or bf16 (each value rounded once, where it is
// written) where only bf16 products read it: MLA's latent context, read by the value up-projection alone,
// whose gemv then takes half the bytes of x a block and none of its own rounding.
struct OutRows {
  void* p;
  int bf16;
};
// Values a, b at elements i, i + 1 of o (i even).
__device__ __forceinline__ void store_pair(OutRows o, int64_t i, float a, float b) {
  if (o.bf16) *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(o.p) + i) = __floats2bfloat162_rn(a, b);
  else *reinterpret_cast<float2*>(static_cast<float*>(o.p) + i) = make_float2(a, b);
}

// V floats at p (16-byte aligned where V is 4).
template <int V>
__device__ __forceinline__ void load_floats(float (&v)[V], const float* p) {
  if constexpr (V == 4) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
#pragma unroll
    for (int e = 0; e < V; e++) v[e] = p[e];
  }
}

// o[b, h] = Σ_j w_j · opart[j, b, h] with w_j = 2^(lse_j − lse) (lse: the log2-sum-exp over the
// sequence's splits; one split wrote o itself). Grid: x = b·H + h, y = a chunk of blockDim.x · V columns;
// each thread V consecutive columns (V = 4 where L is a multiple of 4: 16-byte loads, four times the bytes
// in flight per thread; each column summed in the same order either way, so the same bits).
template <int V>
__global__ void k_split_combine(const Seq* seqs, const int32_t* pos, int64_t window, int gridSplits, int minTiles, const float* opart, const float* lsepart, OutRows o, int H, int64_t BH, int L) {
  extern __shared__ float w[];  // [gridSplits] weights, then their sum
  const int64_t bh = blockIdx.x;
  const int nsplit = splits_of(seq_of(seqs, pos, window, (int)(bh / H)).n, gridSplits, minTiles);
  if (nsplit == 1) return;
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < nsplit; j += 32) m = fmaxf(m, lsepart[j * BH + bh]);
    for (int off = 16; off; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (m == -INFINITY) m = 0.f;
    float sum = 0.f;
    for (int j = threadIdx.x; j < nsplit; j += 32) sum += (w[j] = exp2f(lsepart[j * BH + bh] - m));
    for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (threadIdx.x == 0) w[nsplit] = sum > 0.f ? 1.f / sum : 0.f;
  }
  __syncthreads();
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * V;
  if (c >= L) return;
  // Four independent sums, so four splits' loads are in flight at once (one chain kept one: the merge
  // read its partials at ~1.5 TB/s, ~11 µs per call at llama2-7b's 4k × 1, nineteenth session's ncu).
  const float* p = opart + bh * L + c;
  const int64_t stride = BH * L;
  float x[4][V] = {};
  int j = 0;
  for (; j + 4 <= nsplit; j += 4) {
    float v[4][V];
#pragma unroll
    for (int u = 0; u < 4; u++) load_floats<V>(v[u], p + (j + u) * stride);
#pragma unroll
    for (int u = 0; u < 4; u++)
#pragma unroll
      for (int e = 0; e < V; e++) x[u][e] += w[j + u] * v[u][e];
  }
  for (; j < nsplit; j++) {
    float v[V];
    load_floats<V>(v, p + j * stride);
#pragma unroll
    for (int e = 0; e < V; e++) x[0][e] += w[j] * v[e];
  }
  float y[V];
#pragma unroll
  for (int e = 0; e < V; e++) y[e] = ((x[0][e] + x[1][e]) + (x[2][e] + x[3][e])) * w[nsplit];
  const int64_t i = bh * L + c;
  if constexpr (V == 4) {
    if (o.bf16) {
      const __nv_bfloat162 a = __floats2bfloat162_rn(y[0], y[1]), b = __floats2bfloat162_rn(y[2], y[3]);
      *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(o.p) + i) = make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
    } else {
      *reinterpret_cast<float4*>(static_cast<float*>(o.p) + i) = make_float4(y[0], y[1], y[2], y[3]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; e++) mla_bf16::store_y(o.p, o.bf16, i + e, y[e]);
  }
}

// The host side both kernels share: the sequences' table, the grid's splits and the partial outputs,
// for B sequences (a[b], bb[b]: the two row pointers of Seq; lo, n their visible ranges; pos the host
// positions) of H heads of `width` output columns, with at most `cap` splits per sequence. In a decode
// graph the table is a graph constant, the positions the step's on the device, and the grid has `cap`
// splits (the sequences grow while it lives).
struct SplitCall {
  const Seq* seqs = nullptr;
  const int32_t* pos = nullptr;  // device; null outside a graph
  float* opart = nullptr;        // [splits, B, H, width], when splits > 1
  float* lsepart = nullptr;      // [splits, B, H]
  int splits = 1;
  int minTiles = MIN_TILES_PER_SPLIT;  // the call's minimum tiles per split (min_tiles_per_split)
};
inline mla_status split_call(SplitCall& c, const __nv_bfloat16* const* a, const __nv_bfloat16* const* bb, const int64_t* lo, const int64_t* n, const int32_t* pos, int64_t B, int64_t H, int64_t width, int cap, int minTiles = MIN_TILES_PER_SPLIT) {
  const bool graph = mla::capturing() != nullptr;
  c.minTiles = min_tiles_per_split(minTiles);
  for (int64_t b = 0; b < B; b++) c.splits = std::max(c.splits, splits_of(n[b], cap, c.minTiles));
  if (graph) c.splits = cap;
  std::vector<Seq> seqs(B);
  for (int64_t b = 0; b < B; b++) seqs[b] = {a[b], bb[b], lo[b], n[b]};
  const size_t seqBytes = (B * sizeof(Seq) + 255) & ~size_t(255);
  const size_t partBytes = c.splits > 1 ? ((size_t)(c.splits * B * H * width * 4) + 255) & ~size_t(255) : 0;
  const size_t lseBytes = c.splits > 1 ? (size_t)c.splits * B * H * 4 : 0;
  mla_status st = MLA_OK;
  char* base = (char*)mla::scratch(seqBytes + partBytes + lseBytes, &st);
  if (!base) return st;
  c.seqs = (const Seq*)base;
  c.opart = c.splits > 1 ? (float*)(base + seqBytes) : nullptr;
  c.lsepart = c.splits > 1 ? (float*)(base + seqBytes + partBytes) : nullptr;
  if (!graph) return mla::stage_to_device(seqs.data(), B * sizeof(Seq), (void*)c.seqs);
  if (!(c.pos = mla::step_positions(pos, B))) return MLA_FAIL(MLA_ERR_UNSUPPORTED, "decode attention: positions other than the captured step's");
  if (!(c.seqs = (const Seq*)mla::capture_constant(seqs.data(), B * sizeof(Seq), &st))) return st;
  return MLA_OK;
}

// The merge of the splits into o [B, H, width], when there are several.
inline mla_status split_merge(const SplitCall& c, int64_t window, OutRows o, int64_t B, int64_t H, int64_t width) {
  if (c.splits == 1) return MLA_OK;
  // 16-byte loads (and 16- or 8-byte stores) where the rows allow them (the partials start 16-byte aligned;
  // o may be a view); a block of at most 256 threads, fewer where a row has fewer vectors (MHA's 128 columns: 32).
  const bool vec = width % 4 == 0 && ((uintptr_t)o.p & (o.bf16 ? 7 : 15)) == 0;
  const int64_t vectors = vec ? width / 4 : width, threads = std::min<int64_t>(256, (vectors + 31) / 32 * 32);
  const dim3 grid((unsigned)(B * H), (unsigned)((vectors + threads - 1) / threads));
  const size_t shared = (c.splits + 1) * sizeof(float);
  if (vec) k_split_combine<4><<<grid, (unsigned)threads, shared, mla::ctx()->stream>>>(c.seqs, c.pos, window, c.splits, c.minTiles, c.opart, c.lsepart, o, (int)H, B * H, (int)width);
  else k_split_combine<1><<<grid, (unsigned)threads, shared, mla::ctx()->stream>>>(c.seqs, c.pos, window, c.splits, c.minTiles, c.opart, c.lsepart, o, (int)H, B * H, (int)width);
  KERNEL_CHECK();
  return MLA_OK;
}
}  // namespace
