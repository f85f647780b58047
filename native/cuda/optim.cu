// Training state on the device: the trainer keeps every trainable parameter, its gradient and the
// AdamW moments in flat f32 buffers, so one kernel updates all of them and one reduction gives the
// global gradient norm; only that norm crosses to the host. Reductions are deterministic (fixed grid,
// fixed order), so a resumed run repeats an uninterrupted one bit for bit.
#include "common.cuh"

using mla::ctx;

namespace {
constexpr int kNormBlocks = 512;
constexpr int kNormThreads = 256;

__global__ void k_sum_squares_partial(const float* x, int64_t n, double* partial) {
  __shared__ double red[kNormThreads];
  double s = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) s += (double)x[i] * x[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

__global__ void k_sum_partials(const double* partial, int n, double* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double s = 0;
    for (int i = 0; i < n; i++) s += partial[i];
    *out = s;
  }
}

// The same arithmetic as mla_cpu_adamw (float32, bias corrections as reciprocals).
__global__ void k_adamw(float* p, const float* g, float* m, float* v, __nv_bfloat16* shadow, int64_t n, float lr, float beta1, float beta2, float eps, float wd, float ic1, float ic2, float gs) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float gi = g[i] * gs;
  const float mi = beta1 * m[i] + (1 - beta1) * gi;
  const float vi = beta2 * v[i] + (1 - beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const float pi = p[i] - lr * ((mi * ic1) / (sqrtf(vi * ic2) + eps) + wd * p[i]);
  p[i] = pi;
  if (shadow) shadow[i] = __float2bfloat16(pi);
}
}  // namespace

extern "C" mla_status mla_cuda_fill_zero(mla_cuda_buf* x) {
  NEED_CTX();
  MLA_CHECK(x, "fill_zero: null buffer");
  if (x->n) CUDA_TRY(cudaMemsetAsync(x->ptr, 0, x->n * mla::dtype_size(x->dtype), ctx()->stream));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_sum_squares(const mla_cuda_buf* x, double* out) {
  NEED_CTX();
  MLA_CHECK(x && x->dtype == MLA_F32 && out, "sum_squares: an f32 buffer and a host result");
  mla_status st;
  auto* partial = (double*)mla::scratch(sizeof(double) * (kNormBlocks + 1), &st);
  if (!partial) return st;
  k_sum_squares_partial<<<kNormBlocks, kNormThreads, 0, ctx()->stream>>>((const float*)x->ptr, x->n, partial);
  k_sum_partials<<<1, 32, 0, ctx()->stream>>>(partial, kNormBlocks, partial + kNormBlocks);
  KERNEL_CHECK();
  CUDA_TRY(cudaMemcpyAsync(out, partial + kNormBlocks, sizeof(double), cudaMemcpyDeviceToHost, ctx()->stream));
  CUDA_TRY(cudaStreamSynchronize(ctx()->stream));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_adamw(mla_cuda_buf* p, const mla_cuda_buf* g, mla_cuda_buf* m, mla_cuda_buf* v, mla_cuda_buf* shadow, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2, float grad_scale) {
  NEED_CTX();
  auto f32 = [&](const mla_cuda_buf* b) { return b && b->dtype == MLA_F32 && b->n == p->n; };
  MLA_CHECK(p && f32(p) && f32(g) && f32(m) && f32(v) && (!shadow || (shadow->dtype == MLA_BF16 && shadow->n == p->n)), "adamw: f32 buffers p, g, m, v of one length (and a bf16 shadow of it)");
  MLA_CHECK(bias_c1 > 0 && bias_c2 > 0, "adamw: bias corrections must be positive (step ≥ 1)");
  const int64_t n = p->n;
  if (n) k_adamw<<<blocks_for(n, 256), 256, 0, ctx()->stream>>>((float*)p->ptr, (const float*)g->ptr, (float*)m->ptr, (float*)v->ptr, shadow ? (__nv_bfloat16*)shadow->ptr : nullptr, n, lr, beta1, beta2, eps, weight_decay, (float)(1.0 / bias_c1), (float)(1.0 / bias_c2), grad_scale);
  KERNEL_CHECK();
  return MLA_OK;
}
