// Attention as GEMMs. One query row (decode): the block-per-(row, head) kernel leaves an H100 nearly
// idle at T = 1 (32 blocks, each re-reading the whole cache); here the scores of all heads come from
// cuBLAS (strided-batched over KV heads; the MLA latent is shared by every head, one GEMM), a softmax
// kernel normalizes them in place, and a second GEMM applies them to the values/latents. Many query
// rows (T > 1): the same, over chunks of queries whose scores fit in scratch, each chunk reading only
// the keys its queries can see (so causal prefill does about half the work of a full product).
#include <cfloat>
#include "common.cuh"

using mla::ctx;

// One block, in place on row[n]: softmax(scale·row) over [lo, hi], 0 elsewhere. `red` is [32] shared.
__device__ void softmax_row(float* row, int64_t n, float scale, int64_t lo, int64_t hi, float* red) {
  float mx = -FLT_MAX;
  for (int64_t s = lo + threadIdx.x; s <= hi; s += blockDim.x) mx = fmaxf(mx, row[s] * scale);
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t s = lo + threadIdx.x; s <= hi; s += blockDim.x) z += expf(row[s] * scale - mx);
  z = block_reduce<false>(z, red);
  const float inv = z > 0 ? 1.0f / z : 0.0f;
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) row[s] = (s >= lo && s <= hi) ? expf(row[s] * scale - mx) * inv : 0.0f;
}

// Row h of scores[H, S]: p = softmax(scale·scores) over the visible keys [lo, hi], 0 elsewhere.
__global__ void k_softmax_rows(float* scores, int64_t S, float scale, int64_t lo, int64_t hi) {
  __shared__ float red[32];
  softmax_row(scores + blockIdx.x * S, S, scale, lo, hi, red);
}

static void visible_range(int64_t S, int64_t off, int64_t window, int64_t* lo, int64_t* hi) {
  *hi = off < S - 1 ? off : S - 1;
  *lo = window > 0 ? (off - window + 1 > 0 ? off - window + 1 : 0) : 0;
}

// scores[h, s] (+)= q[h, :]·k[s, g(h), :] for the heads of each KV group: q [H, D] row-major, k [S, Hkv, D].
static mla_status grouped_scores(const float* q, const float* k, float* scores, int64_t S, int64_t H, int64_t Hkv, int64_t D, float beta) {
  const int64_t group = H / Hkv;
  const float one = 1;
  CUBLAS_TRY(cublasSgemmStridedBatched(ctx()->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)S, (int)group, (int)D, &one, k, (int)(Hkv * D), D, q, (int)D, group * D, &beta, scores, (int)S, group * S, (int)Hkv));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_attention_decode(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, mla_cuda_buf* o, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  NEED_CTX();
  MLA_CHECK(q && k && v && o && q->n == H * Dh && k->n == S * Hkv * Dh && v->n == S * Hkv * Dv && o->n == H * Dv && Hkv > 0 && H % Hkv == 0 && S > 0, "attention_decode: buffers q[1,H,Dh], k[S,Hkv,Dh], v[S,Hkv,Dv], o[1,H,Dv]");
  mla_status st;
  float* scores = (float*)mla::scratch(sizeof(float) * H * S, &st);
  if (!scores) return st;
  if (mla_status e = grouped_scores((const float*)q->ptr, (const float*)k->ptr, scores, S, H, Hkv, Dh, 0.0f)) return e;
  int64_t lo, hi;
  visible_range(S, off, window, &lo, &hi);
  k_softmax_rows<<<(unsigned)H, 256, 0, ctx()->stream>>>(scores, S, scale, lo, hi);
  KERNEL_CHECK();
  const int64_t group = H / Hkv;
  const float one = 1, zero = 0;
  CUBLAS_TRY(cublasSgemmStridedBatched(ctx()->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)Dv, (int)group, (int)S, &one, (const float*)v->ptr, (int)(Hkv * Dv), Dv, scores, (int)S, group * S, &zero, (float*)o->ptr, (int)Dv, group * Dv, (int)Hkv));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_latent_attention_decode(const mla_cuda_buf* qr, const mla_cuda_buf* kr, const mla_cuda_buf* qc, const mla_cuda_buf* c, mla_cuda_buf* o, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t off, int64_t window) {
  NEED_CTX();
  MLA_CHECK(qr && kr && qc && c && o && qr->n == H * Dr && kr->n == S * Hkv * Dr && qc->n == H * L && c->n == S * L && o->n == H * L && Hkv > 0 && H % Hkv == 0 && S > 0, "latent_attention_decode: buffers qr[1,H,Dr], kr[S,Hkv,Dr], qc[1,H,L], c[S,L], o[1,H,L]");
  mla_status st;
  float* scores = (float*)mla::scratch(sizeof(float) * H * S, &st);
  if (!scores) return st;
  const float one = 1, zero = 0;
  // The latent is shared by every head: scores[H, S] = qc[H, L]·c[S, L]ᵀ in one GEMM, then the rope part added.
  CUBLAS_TRY(cublasSgemm(ctx()->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)S, (int)H, (int)L, &one, (const float*)c->ptr, (int)L, (const float*)qc->ptr, (int)L, &zero, scores, (int)S));
  if (Dr > 0)
    if (mla_status e = grouped_scores((const float*)qr->ptr, (const float*)kr->ptr, scores, S, H, Hkv, Dr, 1.0f)) return e;
  int64_t lo, hi;
  visible_range(S, off, window, &lo, &hi);
  k_softmax_rows<<<(unsigned)H, 256, 0, ctx()->stream>>>(scores, S, scale, lo, hi);
  KERNEL_CHECK();
  CUBLAS_TRY(cublasSgemm(ctx()->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)L, (int)H, (int)S, &one, (const float*)c->ptr, (int)L, scores, (int)S, &zero, (float*)o->ptr, (int)L));
  return MLA_OK;
}

// ---- T > 1 (prefill, evaluation, calibration): the same GEMM + softmax route over chunks of queries ----

// Row (h, t) of scores[H, Tq, Sc] (keys klo … klo+Sc−1): softmax(scale·scores) over the keys query
// t0 + t may see, 0 elsewhere.
__global__ void k_softmax_causal(float* scores, int64_t Tq, int64_t Sc, float scale, int64_t qpos0, int64_t klo, int64_t S, int64_t window) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x % Tq;
  float* row = scores + (int64_t)blockIdx.x * Sc;
  const int64_t qpos = qpos0 + t;
  const int64_t hi = min(min(S - 1, qpos), klo + Sc - 1) - klo;
  const int64_t lo = (window > 0 ? max((int64_t)0, qpos - window + 1) : 0) - klo;
  softmax_row(row, Sc, scale, max(lo, (int64_t)0), hi, red);
}

// Queries per chunk such that `buffers` score arrays [H, Tq, S] fit in 512 MiB of scratch (a
// multiple of 64 where that fits).
static int64_t queries_per_chunk(int64_t T, int64_t H, int64_t S, int64_t buffers) {
  int64_t Tq = ((int64_t)1 << 27) / (buffers * H * (S > 0 ? S : 1));
  Tq = Tq >= 64 ? Tq / 64 * 64 : (Tq > 0 ? Tq : 1);
  return Tq < T ? Tq : T;
}

// The keys [klo, khi] that queries t0 … t0+n−1 (positions + off) can see; khi < klo when none.
static void chunk_keys(int64_t t0, int64_t n, int64_t S, int64_t off, int64_t window, int64_t* klo, int64_t* khi) {
  *khi = min(S - 1, t0 + n - 1 + off);
  *klo = window > 0 ? max((int64_t)0, t0 + off - window + 1) : 0;
}

namespace mla {
mla_status attention_gemm(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  const int64_t group = H / Hkv;
  const int64_t Tq = queries_per_chunk(T, H, S, 1);
  mla_status st;
  float* scores = (float*)scratch(sizeof(float) * H * Tq * (S > 0 ? S : 1), &st);
  if (!scores) return st;
  const float one = 1, zero = 0;
  for (int64_t t0 = 0; t0 < T; t0 += Tq) {
    const int64_t n = min(Tq, T - t0);
    int64_t klo, khi;
    chunk_keys(t0, n, S, off, window, &klo, &khi);
    if (khi < klo) {  // no visible key for any query of the chunk
      CUDA_TRY(cudaMemsetAsync(o + t0 * H * Dv, 0, sizeof(float) * n * H * Dv, ctx()->stream));
      continue;
    }
    const int64_t Sc = khi - klo + 1;
    // For the j-th head of every KV group at once (batch over the Hkv groups):
    // scores[h, t, s] = q[t0+t, h, :]·k[klo+s, g, :] — column-major [Sc × n] blocks, ld Sc.
    for (int64_t j = 0; j < group; j++)
      CUBLAS_TRY(cublasSgemmStridedBatched(ctx()->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)Sc, (int)n, (int)Dh, &one, k + klo * Hkv * Dh, (int)(Hkv * Dh), Dh, q + (t0 * H + j) * Dh, (int)(H * Dh), group * Dh, &zero, scores + j * n * Sc, (int)Sc, group * n * Sc, (int)Hkv));
    k_softmax_causal<<<(unsigned)(H * n), 256, 0, ctx()->stream>>>(scores, n, Sc, scale, t0 + off, klo, S, window);
    KERNEL_CHECK();
    // o[t0+t, h, :] = Σ_s p[h, t, s]·v[klo+s, g, :] — column-major [Dv × n] blocks with ld H·Dv.
    for (int64_t j = 0; j < group; j++)
      CUBLAS_TRY(cublasSgemmStridedBatched(ctx()->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)Dv, (int)n, (int)Sc, &one, v + klo * Hkv * Dv, (int)(Hkv * Dv), Dv, scores + j * n * Sc, (int)Sc, group * n * Sc, &zero, o + (t0 * H + j) * Dv, (int)(H * Dv), group * Dv, (int)Hkv));
  }
  return MLA_OK;
}
}  // namespace mla

// ---- backward of the chunked GEMM attention (training) ----

// In place on one row (h, t): ds = scale · p ⊙ (dp − Σ p·dp), the gradient of the raw scores.
__global__ void k_softmax_backward_rows(const float* p, float* dp, int64_t Sc, float scale) {
  __shared__ float red[32];
  const float* pr = p + (int64_t)blockIdx.x * Sc;
  float* dr = dp + (int64_t)blockIdx.x * Sc;
  float dot = 0;
  for (int64_t s = threadIdx.x; s < Sc; s += blockDim.x) dot += pr[s] * dr[s];
  dot = block_reduce<false>(dot, red);
  for (int64_t s = threadIdx.x; s < Sc; s += blockDim.x) dr[s] = scale * pr[s] * (dr[s] - dot);
}

extern "C" mla_status mla_cuda_attention_backward(const mla_cuda_buf* qb, const mla_cuda_buf* kb, const mla_cuda_buf* vb, const mla_cuda_buf* dob, mla_cuda_buf* dqb, mla_cuda_buf* dkb, mla_cuda_buf* dvb, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  NEED_CTX();
  auto f32 = [](const mla_cuda_buf* b, int64_t n) { return b && b->dtype == MLA_F32 && b->n == n; };
  MLA_CHECK(f32(qb, T * H * Dh) && f32(kb, S * Hkv * Dh) && f32(vb, S * Hkv * Dv) && f32(dob, T * H * Dv) && f32(dqb, T * H * Dh) && f32(dkb, S * Hkv * Dh) && f32(dvb, S * Hkv * Dv), "attention_backward: f32 buffers q[T,H,Dh], k[S,Hkv,Dh], v[S,Hkv,Dv], dout[T,H,Dv] and gradients of the same shapes");
  MLA_CHECK(Hkv > 0 && H % Hkv == 0, "attention_backward: H must be a multiple of Hkv");
  const float* q = (const float*)qb->ptr; const float* k = (const float*)kb->ptr; const float* v = (const float*)vb->ptr; const float* dout = (const float*)dob->ptr;
  float* dq = (float*)dqb->ptr; float* dk = (float*)dkb->ptr; float* dv = (float*)dvb->ptr;
  cudaStream_t st_ = ctx()->stream;
  CUDA_TRY(cudaMemsetAsync(dq, 0, sizeof(float) * T * H * Dh, st_));
  CUDA_TRY(cudaMemsetAsync(dk, 0, sizeof(float) * S * Hkv * Dh, st_));
  CUDA_TRY(cudaMemsetAsync(dv, 0, sizeof(float) * S * Hkv * Dv, st_));
  if (T == 0 || S == 0) return MLA_OK;
  const int64_t group = H / Hkv;
  const int64_t Tq = queries_per_chunk(T, H, S, 2);  // probabilities and their gradient
  mla_status st;
  float* P = (float*)mla::scratch(sizeof(float) * 2 * H * Tq * S, &st);
  if (!P) return st;
  float* dP = P + H * Tq * S;
  const float one = 1, zero = 0;
  cublasHandle_t h = ctx()->blas;
  for (int64_t t0 = 0; t0 < T; t0 += Tq) {
    const int64_t n = min(Tq, T - t0);
    int64_t klo, khi;
    chunk_keys(t0, n, S, off, window, &klo, &khi);
    if (khi < klo) continue;  // no visible key: every gradient of the chunk is 0
    const int64_t Sc = khi - klo + 1;
    // Recompute P as the forward does; dP[h,t,s] = dout[t0+t,h,:]·v[klo+s,g,:].
    for (int64_t j = 0; j < group; j++) {
      CUBLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)Sc, (int)n, (int)Dh, &one, k + klo * Hkv * Dh, (int)(Hkv * Dh), Dh, q + (t0 * H + j) * Dh, (int)(H * Dh), group * Dh, &zero, P + j * n * Sc, (int)Sc, group * n * Sc, (int)Hkv));
      CUBLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)Sc, (int)n, (int)Dv, &one, v + klo * Hkv * Dv, (int)(Hkv * Dv), Dv, dout + (t0 * H + j) * Dv, (int)(H * Dv), group * Dv, &zero, dP + j * n * Sc, (int)Sc, group * n * Sc, (int)Hkv));
    }
    k_softmax_causal<<<(unsigned)(H * n), 256, 0, st_>>>(P, n, Sc, scale, t0 + off, klo, S, window);
    KERNEL_CHECK();
    k_softmax_backward_rows<<<(unsigned)(H * n), 256, 0, st_>>>(P, dP, Sc, scale);  // dP becomes dS
    KERNEL_CHECK();
    for (int64_t j = 0; j < group; j++) {
      // dq[t0+t, h, :] = Σ_s dS[h,t,s]·k[klo+s, g, :]
      CUBLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)Dh, (int)n, (int)Sc, &one, k + klo * Hkv * Dh, (int)(Hkv * Dh), Dh, dP + j * n * Sc, (int)Sc, group * n * Sc, &zero, dq + (t0 * H + j) * Dh, (int)(H * Dh), group * Dh, (int)Hkv));
      // dk[klo+s, g, :] += Σ_t dS[h,t,s]·q[t0+t, h, :];  dv[klo+s, g, :] += Σ_t P[h,t,s]·dout[t0+t, h, :]
      CUBLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)Dh, (int)Sc, (int)n, &one, q + (t0 * H + j) * Dh, (int)(H * Dh), group * Dh, dP + j * n * Sc, (int)Sc, group * n * Sc, &one, dk + klo * Hkv * Dh, (int)(Hkv * Dh), Dh, (int)Hkv));
      CUBLAS_TRY(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)Dv, (int)Sc, (int)n, &one, dout + (t0 * H + j) * Dv, (int)(H * Dv), group * Dv, P + j * n * Sc, (int)Sc, group * n * Sc, &one, dv + klo * Hkv * Dv, (int)(Hkv * Dv), Dv, (int)Hkv));
    }
  }
  return MLA_OK;
}
