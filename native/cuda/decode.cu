// Attention as GEMMs. One query row (decode): the block-per-(row, head) kernel leaves an H100 nearly
// idle at T = 1 (32 blocks, each re-reading the whole cache); here the scores of all heads come from
// cuBLAS (strided-batched over KV heads; the MLA latent is shared by every head, one GEMM), a softmax
// kernel normalizes them in place, and a second GEMM applies them to the values/latents. Many query
// rows (T > 1): attention_gemm.cu.
#include <cfloat>
#include "common.cuh"

using mla::ctx;

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
  // A single sequence's cache length is fixed in the launch; a replay would attend over a stale length.
  if (mla::capturing()) return mla::refuse("attention_decode sizes its sequence on the host (decode graphs record the batched decode ops)");
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
  if (mla::capturing()) return mla::refuse("latent_attention_decode sizes its sequence on the host (decode graphs record the batched decode ops)");
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
