/*
 * mha2mla native compute, C ABI. Loaded from TypeScript with koffi (src/backends/native/).
 *
 * Conventions: row-major float32 arrays; shapes in comments use B batch, T query time, S key time,
 * H query heads, Hkv KV heads, Dh/Dv head dims, M/N/K generic. Every function returns a status;
 * on failure mla_last_error() gives "file:line: message" for the calling thread. Nothing here calls
 * exit() or prints. The CPU build works on host pointers owned by the caller (JavaScript typed
 * arrays, passed without copies); the CUDA build (native/cuda/, not yet written) will add device
 * buffers behind opaque handles with the same op names.
 */
#ifndef MLA_H
#define MLA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MLA_OK = 0,
  MLA_ERR_ARGUMENT = 1,  /* a size or pointer is invalid */
  MLA_ERR_MEMORY = 2,    /* an allocation failed */
  MLA_ERR_INTERNAL = 3
} mla_status;

/* The last error of this thread, "file:line: message"; "" when none. */
const char* mla_last_error(void);
/* Compiler, flags, GEMM route and threading of this build, e.g.
   "g++ 12.2.0 -march=native, own GEMM OpenMP(2)" or "…, OpenBLAS libopenblas.so.0 (core Haswell) …".
   linear and linear_backward call cblas_sgemm from a system OpenBLAS found at load time (dlopen of
   $MHA2MLA_OPENBLAS or libopenblas.so.0); MHA2MLA_BLAS=own keeps our own kernel. */
const char* mla_build_info(void);
int mla_num_threads(void);
void mla_set_num_threads(int n);

/* y[M,N] = x[M,K] · w[N,K]ᵀ (+ b[N] when b is not NULL). */
mla_status mla_cpu_linear(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t K, int64_t N);

/* Gradients of mla_cpu_linear: dx[M,K] = dy·w, dw[N,K] = dyᵀ·x, db[N] = Σ_rows dy.
   Each output is skipped when NULL; outputs are overwritten, not accumulated. */
mla_status mla_cpu_linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db, int64_t M, int64_t K, int64_t N);

/* Causal GQA attention: q[T,H,Dh], k[S,Hkv,Dh], v[S,Hkv,Dv] → o[T,H,Dv]. Query row t sits at key
   position t + query_offset; keys more than `window` positions behind are masked (window <= 0: none). */
mla_status mla_cpu_attention(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window);

/* Gradients of mla_cpu_attention for dout[T,H,Dv]: dq[T,H,Dh], dk[S,Hkv,Dh], dv[S,Hkv,Dv] (overwritten). */
mla_status mla_cpu_attention_backward(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk, float* dv, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window);

/* y[n] = silu(gate)·up; and its gradients (overwritten). */
mla_status mla_cpu_swiglu(const float* gate, const float* up, float* y, int64_t n);
mla_status mla_cpu_swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n);

/* Per row of logits[T,V]: loss[t] = −log softmax(logits)[targets[t]] (double, skipped when NULL);
   dlogits[T,V] = scale·(softmax − onehot) (skipped when NULL). Targets must lie in [0, V). */
mla_status mla_cpu_cross_entropy(const float* logits, const int32_t* targets, double* loss, float* dlogits, float scale, int64_t T, int64_t V);

/* RMSNorm over rows of length D: y = x / sqrt(mean(x²) + eps) · w; and its gradients (overwritten). */
mla_status mla_cpu_rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps);
mla_status mla_cpu_rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows, int64_t D, float eps);

/* Rotate-half RoPE of x[T,H,Dh] at positions[T] into y (may equal x): the first rotary_dims dims of each
   head rotate as pairs (i, i + rotary_dims/2) by positions[t]·inv_freq (angle rounded to float32, as HF
   does); the rest are copied. inv_freq has rotary_dims/2 entries shared by all heads, or H·rotary_dims/2
   (one set per head: MLA's partial RoPE). sign = -1 rotates by the opposite angle (the backward). */
mla_status mla_cpu_rope(const float* x, float* y, const int32_t* positions, const double* inv_freq, int64_t n_freq, int64_t T, int64_t H, int64_t Dh, int64_t rotary_dims, int32_t sign);

/* y[T,D] = rows of table[V,D] at ids[T]; an id outside [0, V) is an error naming its position.
   Backward: dtable[V,D] (overwritten) = rows of dy[T,D] summed at ids. */
mla_status mla_cpu_embedding(const float* table, const int32_t* ids, float* y, int64_t T, int64_t V, int64_t D);
mla_status mla_cpu_embedding_backward(const int32_t* ids, const float* dy, float* dtable, int64_t T, int64_t V, int64_t D);

/* One AdamW step in place on p[n] with gradient g[n] and moments m[n], v[n]: decoupled weight decay,
   bias corrections bias_c1 = 1 − β1^step, bias_c2 = 1 − β2^step. */
mla_status mla_cpu_adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2);
/* *out = Σ x² (double accumulation), and x *= s in place: global-norm gradient clipping. */
mla_status mla_cpu_sum_squares(const float* x, int64_t n, double* out);
mla_status mla_cpu_scale_inplace(float* x, int64_t n, float s);

/* 2-norm calibration: acc[heads, Dh/2] += mean over T of the L2 norm of each RoPE pair (i, i + Dh/2)
   of y[T, heads, Dh]. */
mla_status mla_cpu_pair_norms(const float* y, double* acc, int64_t T, int64_t heads, int64_t Dh);
/* acc[D,D] upper triangle (row-major, j ≥ i) += xᵀ·x for x[T,D] (float64): activation covariance. */
mla_status mla_cpu_accumulate_covariance(const float* x, double* acc, int64_t T, int64_t D);

/* G[N,N] = Aᵀ·A for A[M,N], float64. */
mla_status mla_cpu_gram_f64(const double* A, double* G, int64_t M, int64_t N);

/* Eigendecomposition of a symmetric S[n,n] (float64): values[n] descending, vectors[n,n] with the
   eigenvector of values[i] in row i. */
mla_status mla_cpu_symmetric_eigen(const double* S, double* values, double* vectors, int64_t n);

/* Z[a,c] = X[a,b]·Y[b,c], float64. */
mla_status mla_cpu_matmul_f64(const double* X, const double* Y, double* Z, int64_t a, int64_t b, int64_t c);

#ifdef __cplusplus
}
#endif

#endif /* MLA_H */
