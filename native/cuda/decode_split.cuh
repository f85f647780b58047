// Splitting decode attention along the context (FlashDecoding), shared by the fused latent kernel
// (latent_decode.cu) and the MHA kernel (mha_decode.cu): a per-sequence table, the visible range a
// decode graph recomputes from the step's positions, how many splits a sequence takes, and the merge
// of the splits' partial outputs by their log2-sum-exp.
#pragma once
#include <cmath>
#include "common.cuh"

namespace {
constexpr int TN = 16;  // cached rows per tile
// A split writes and the merge reads back its partial output (16·L floats per head block for the
// latent kernel, about two tiles of bf16 latent): each split gets at least 8 tiles so that costs ≤ 25% of its reads.
constexpr int MIN_TILES_PER_SPLIT = 8;

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

// Splits of a sequence of n visible keys: each ≥ MIN_TILES_PER_SPLIT tiles, at most the grid's. A
// function of n alone, so a graph (whose grid has the most splits the batch can use) and an eager
// call (the fewest its longest sequence needs) split a sequence alike and give the same bits.
__host__ __device__ __forceinline__ int splits_of(int64_t n, int cap) {
  const int64_t tiles = (n + TN - 1) / TN, want = tiles / MIN_TILES_PER_SPLIT;
  return (int)(want < 1 ? 1 : want < cap ? want : cap);
}

// o[b, h] = Σ_j w_j · opart[j, b, h] with w_j = 2^(lse_j − lse) (lse: the log2-sum-exp over the
// sequence's splits; one split wrote o itself). Grid: x = b·H + h, y = a 256-column chunk of L.
__global__ void k_split_combine(const Seq* seqs, const int32_t* pos, int64_t window, int gridSplits, const float* opart, const float* lsepart, float* o, int H, int64_t BH, int L) {
  extern __shared__ float w[];  // [gridSplits] weights, then their sum
  const int64_t bh = blockIdx.x;
  const int nsplit = splits_of(seq_of(seqs, pos, window, (int)(bh / H)).n, gridSplits);
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
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= L) return;
  float x = 0.f;
  for (int j = 0; j < nsplit; j++) x += w[j] * opart[(j * BH + bh) * L + c];
  o[bh * L + c] = x * w[nsplit];
}

}  // namespace
