// Scoring rows of logits on the device (a scored prompt, lm-eval's log-likelihoods): per row, the
// log-softmax of one target token and the `top` most likely tokens with theirs, so only those numbers
// come back to the host instead of the whole [T, V] row (a 4k-token prompt of a 32k vocabulary is
// 0.5 GB of float32 logits and 130M exps on the host). One block per row: each thread keeps a running
// (max, Σ exp) pair and its own sorted top list over its strided share of the row; the block combines
// the pairs, then picks the top tokens in `top` rounds of a block-wide arg-max over the threads' list
// heads (ties to the lower id, as the host's tokenLogprobs breaks them).
#include <cfloat>
#include <cmath>
#include "common.cuh"

using mla::ctx;

namespace {
constexpr int ROW_THREADS = 256;
constexpr int MAX_TOP = 20;  // the most alternatives a request may ask (serve's MAX_LOGPROBS)

// (value, id) ordering: larger value first, the lower id on ties.
__device__ __forceinline__ bool better(float v, int i, float w, int j) { return v > w || (v == w && i < j); }

// The block's best (value, id) of its threads' (v, id), by `better`: left in thread 0's v and id.
// wv, wi: shared scratch of a value per warp, free again once thread 0 has read it.
__device__ __forceinline__ void block_best(float& v, int& id, float* wv, int* wi) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, id, o);
    if (better(v2, i2, v, id)) v = v2, id = i2;
  }
  if (lane == 0) wv[warp] = v, wi[warp] = id;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < ROW_THREADS / 32; w++)
      if (better(wv[w], wi[w], v, id)) v = wv[w], id = wi[w];
}

__device__ __forceinline__ void merge_max_sum(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  s = (m == -INFINITY ? 0.f : s * expf(m - M)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - M));
  m = M;
}

// logits [T, V]; targets [T] (−1: none); out: logprob [T] (NaN where no target), top ids and log-probabilities [T, top].
__global__ void __launch_bounds__(ROW_THREADS) k_row_logprobs(const float* logits, const int32_t* targets, int64_t V, int top, float* logprob, int32_t* topIds, float* topLp) {
  __shared__ float sm[ROW_THREADS / 32], ss[ROW_THREADS / 32], wv[ROW_THREADS / 32];
  __shared__ int wi[ROW_THREADS / 32];
  __shared__ float lseShared;
  __shared__ int winner;
  const float* row = logits + (int64_t)blockIdx.x * V;
  float lv[MAX_TOP];
  int li[MAX_TOP];
  int count = 0;
  float m = -INFINITY, s = 0.f;
  for (int64_t i = threadIdx.x; i < V; i += ROW_THREADS) {
    const float x = row[i];
    if (x > m) {
      s = (m == -INFINITY ? 0.f : s * expf(m - x)) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
    // Strided ids rise, so a strict > keeps the lower id ahead on ties.
    if (top > 0 && (count < top || x > lv[count - 1])) {
      int at = count < top ? count++ : top - 1;
      while (at > 0 && x > lv[at - 1]) {
        lv[at] = lv[at - 1];
        li[at] = li[at - 1];
        at--;
      }
      lv[at] = x;
      li[at] = (int)i;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) merge_max_sum(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) sm[warp] = m, ss[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = sm[0], S = ss[0];
    for (int w = 1; w < ROW_THREADS / 32; w++) merge_max_sum(M, S, sm[w], ss[w]);
    lseShared = M + logf(S);
    const int32_t t = targets[blockIdx.x];
    logprob[blockIdx.x] = t >= 0 && t < V ? row[t] - lseShared : NAN;
  }
  __syncthreads();
  const float lse = lseShared;
  int head = 0;
  for (int r = 0; r < top; r++) {
    float v = head < count ? lv[head] : -INFINITY;
    int id = head < count ? li[head] : INT_MAX;
    block_best(v, id, wv, wi);
    if (threadIdx.x == 0) {
      winner = id;
      topIds[(int64_t)blockIdx.x * top + r] = id;
      topLp[(int64_t)blockIdx.x * top + r] = v - lse;
    }
    __syncthreads();
    // The thread whose list held the winner moves past it (ids are unique across threads).
    if (head < count && li[head] == winner) head++;
    __syncthreads();
  }
}

// The arg-max of each row of logits [T, V] (greedy decoding's next tokens), as the host's pickToken
// takes it: the first id holding the largest value, NaN and −∞ never taken; −1 where a row holds no
// such value (the host then reports the broken row). One block per row.
__global__ void __launch_bounds__(ROW_THREADS) k_row_argmax(const float* logits, int64_t V, int32_t* ids) {
  __shared__ float wv[ROW_THREADS / 32];
  __shared__ int wi[ROW_THREADS / 32];
  const float* row = logits + (int64_t)blockIdx.x * V;
  float v = -INFINITY;
  int id = INT_MAX;  // none
  // Strided ids rise, so a strict > keeps a thread's first id of its largest value.
  for (int64_t i = threadIdx.x; i < V; i += ROW_THREADS) {
    const float x = row[i];
    if (x > v) v = x, id = (int)i;
  }
  block_best(v, id, wv, wi);
  if (threadIdx.x == 0) ids[blockIdx.x] = id == INT_MAX ? -1 : id;
}

}  // namespace

// logits [T, V] f32 on the device; targets [T] on the host (−1: no target for that row); logprob [T],
// top_ids and top_lp [T, top] host arrays filled before it returns. top ≤ 20, and ≤ V.
extern "C" mla_status mla_cuda_row_logprobs(const mla_cuda_buf* logits, const int32_t* targets, int64_t T, int64_t V, int32_t top, float* logprob, int32_t* top_ids, float* top_lp) {
  NEED_CTX();
  MLA_CHECK(logits && logits->dtype == MLA_F32 && logits->n == T * V && V > 0, "row_logprobs: logits must be f32 [T, V]");
  MLA_CHECK(top >= 0 && top <= MAX_TOP && top <= V, "row_logprobs: top must be 0 … 20 and at most V");
  MLA_CHECK(V < INT32_MAX, "row_logprobs: the vocabulary must fit 32-bit ids");
  if (T == 0) return MLA_OK;
  cudaStream_t s = ctx()->stream;
  // The context's scratch (counted, reused; stream-ordered like the calls below): targets, log-probabilities, top ids, top values.
  const int64_t tops = T * (top > 0 ? top : 1);
  mla_status st;
  char* base = (char*)mla::scratch(sizeof(int32_t) * (T + tops) + sizeof(float) * (T + tops), &st);
  if (!base) return st;
  int32_t* dt = (int32_t*)base;
  float* dl = (float*)(dt + T);
  int32_t* di = (int32_t*)(dl + T);
  float* dv = (float*)(di + tops);
  if (mla_status e = mla::stage_to_device(targets, sizeof(int32_t) * T, dt)) return e;
  k_row_logprobs<<<(unsigned)T, ROW_THREADS, 0, s>>>((const float*)logits->ptr, dt, V, top, dl, di, dv);
  KERNEL_CHECK();
  CUDA_TRY(cudaMemcpyAsync(logprob, dl, sizeof(float) * T, cudaMemcpyDeviceToHost, s));
  if (top > 0) {
    CUDA_TRY(cudaMemcpyAsync(top_ids, di, sizeof(int32_t) * T * top, cudaMemcpyDeviceToHost, s));
    CUDA_TRY(cudaMemcpyAsync(top_lp, dv, sizeof(float) * T * top, cudaMemcpyDeviceToHost, s));
  }
  CUDA_TRY(cudaStreamSynchronize(s));
  return MLA_OK;
}

// logits [T, V] f32 on the device; ids [T] a host array filled before it returns: each row's arg-max
// (k_row_argmax), so greedy decoding brings T ids to the host instead of T·V logits.
extern "C" mla_status mla_cuda_row_argmax(const mla_cuda_buf* logits, int64_t T, int64_t V, int32_t* ids) {
  NEED_CTX();
  MLA_CHECK(logits && logits->dtype == MLA_F32 && logits->n == T * V && V > 0, "row_argmax: logits must be f32 [T, V]");
  MLA_CHECK(V < INT32_MAX, "row_argmax: the vocabulary must fit 32-bit ids");
  if (T == 0) return MLA_OK;
  cudaStream_t s = ctx()->stream;
  mla_status st;
  int32_t* di = (int32_t*)mla::scratch(sizeof(int32_t) * T, &st);
  if (!di) return st;
  k_row_argmax<<<(unsigned)T, ROW_THREADS, 0, s>>>((const float*)logits->ptr, V, di);
  KERNEL_CHECK();
  CUDA_TRY(cudaMemcpyAsync(ids, di, sizeof(int32_t) * T, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaStreamSynchronize(s));
  return MLA_OK;
}
