/*
 * mha2mla native compute, C ABI. Loaded from TypeScript with koffi (src/backends/native/).
 *
 * Conventions: row-major float32 arrays; shapes in comments use B batch, T query time, S key time,
 * H query heads, Hkv KV heads, Dh/Dv head dims, M/N/K generic. Every function returns a status;
 * on failure mla_last_error() gives "file:line: message" for the calling thread. Nothing here calls
 * exit() or prints. The CPU build works on host pointers owned by the caller (JavaScript typed
 * arrays, passed without copies); the CUDA build (native/cuda/) keeps tensors in device buffers behind
 * opaque handles, with the same op names under mla_cuda_.
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
  MLA_ERR_INTERNAL = 3,
  MLA_ERR_UNAVAILABLE = 4, /* no usable GPU / driver (CUDA build) */
  MLA_ERR_UNSUPPORTED = 5  /* an op that a decode graph capture cannot record (CUDA build) */
} mla_status;

/* The last error, "file:line: message"; "" when none. Per thread in the CPU build; one per process in
   the CUDA build (asynchronous calls run on worker threads). */
const char* mla_last_error(void);
/* Compiler, flags, GEMM route and threading of this build, e.g.
   "g++ 12.2.0 -march=native, own GEMM OpenMP(2)" or "…, OpenBLAS libopenblas.so.0 (core Haswell) …".
   linear and linear_backward call cblas_sgemm from a system OpenBLAS found at load time (dlopen of
   $MHA2MLA_OPENBLAS or libopenblas.so.0); so do gram_f64 and matmul_f64 (cblas_dgemm) and
   symmetric_eigen (LAPACK dsyevd, when that OpenBLAS carries it). MHA2MLA_BLAS=own keeps our own
   kernels. */
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

/* MLA attention on the latent cache: qr[T,H,Dr], kr[S,Hkv,Dr], qc[T,H,L], c[S,L] → o[T,H,L], query row t
   at key position t + query_offset, causal, within `window` keys (0: all); head h scores
   scale·(qr_h·kr_{s, h/(H/Hkv)} + qc_h·c_s) and averages the latents c_s. */
mla_status mla_cpu_latent_attention(const float* qr, const float* kr, const float* qc, const float* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window);

/* mla_cpu_attention over a bf16 cache: k[S,Hkv,Dh] and v[S,Hkv,Dv] as bf16 bits (uint16). The same
   result bit for bit as mla_cpu_attention on the rows widened to float32 (exact). */
mla_status mla_cpu_attention_bf16_kv(const float* q, const uint16_t* k, const uint16_t* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window);

/* mla_cpu_latent_attention over a bf16 cache: kr[S,Hkv,Dr] and c[S,L] as bf16 bits (uint16); the same
   result bit for bit as mla_cpu_latent_attention on the rows widened to float32. */
mla_status mla_cpu_latent_attention_bf16(const float* qr, const uint16_t* kr, const float* qc, const uint16_t* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window);

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

/* One AdamW step in place on p[n] with gradient g[n] · grad_scale (g unchanged) and moments m[n], v[n]:
   decoupled weight decay, bias corrections bias_c1 = 1 − β1^step, bias_c2 = 1 − β2^step. */
mla_status mla_cpu_adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2, float grad_scale);
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

/* ======================= CUDA build (native/cuda → libmla_cuda.so) =======================
   Tensors live on one GPU in buffers behind opaque handles, allocated from CUDA's stream-ordered
   pool (a caching allocator); every op runs on one stream. Host int arrays (positions, ids,
   targets, column indices) are passed as host pointers and copied by the op. Shapes as above. */
/* MLA_Q8 / MLA_Q4: a quantized decode cache's rows, one element per byte (layout: native/cuda/kv_quant.cuh). */
enum { MLA_F32 = 0, MLA_BF16 = 1, MLA_F64 = 2, MLA_I32 = 3, MLA_Q8 = 4, MLA_Q4 = 5 };
typedef struct mla_cuda_buf mla_cuda_buf;

/* Picks the device and creates the stream and cuBLAS/cuSOLVER handles. MLA_ERR_UNAVAILABLE with the
   CUDA error, and a driver/toolkit mismatch spelled out, when no GPU can be used. */
mla_status mla_cuda_init(int device);
/* "NVIDIA H100 80GB HBM3, 81559 MiB, sm_90, driver CUDA 13.0, runtime 13.0". */
const char* mla_cuda_info(void);
/* A buffer of n elements of dtype; NULL on failure (out of memory: mla_last_error names the size,
   what mha2mla holds and what the device has free). */
mla_cuda_buf* mla_cuda_alloc(int64_t n, int32_t dtype);
void mla_cuda_free(mla_cuda_buf* b);
/* A non-owning handle on elements [offset, offset + n) of parent (freeing it frees only the handle;
   it must not outlive the parent). */
mla_cuda_buf* mla_cuda_view(const mla_cuda_buf* parent, int64_t offset, int64_t n);
/* dst[dst_offset + i] = src[src_offset + i] for i < n, on the device (same dtype). */
mla_status mla_cuda_copy(mla_cuda_buf* dst, int64_t dst_offset, const mla_cuda_buf* src, int64_t src_offset, int64_t n);
mla_status mla_cuda_upload(mla_cuda_buf* dst, const void* host, int64_t bytes);
mla_status mla_cuda_download(const mla_cuda_buf* src, void* host, int64_t bytes);
/* out[4] = bytes held by live buffers, their peak, device free, device total. */
mla_status mla_cuda_memory(int64_t* out);
mla_status mla_cuda_reset_peak(void);
/* Quantized cache rows (kv_quant.cuh): row r of src [R, n] (float32) into dsts[r] (MLA_Q8/MLA_Q4) as
   its row rows[r]; several r may name one store. */
mla_status mla_cuda_kv_quant_rows(const mla_cuda_buf* src, mla_cuda_buf* const* dsts, const int64_t* rows, int64_t R, int64_t n);
/* Rows [row0, row0 + count) of a quantized store of rows of n values → dst [count, n] (float32 or bf16). */
mla_status mla_cuda_kv_dequant_rows(const mla_cuda_buf* src, int64_t row0, int64_t count, int64_t n, mla_cuda_buf* dst);
/* cuDNN's version (e.g. 91400) when this build has the cuDNN attention route and cuDNN loads on this
   device, else 0. */
int32_t mla_cuda_cudnn_version(void);
mla_status mla_cuda_synchronize(void);
/* Milliseconds the library itself has blocked the host on the device so far (waiting for a pinned staging
   slot still being copied: the host is that far ahead of the GPU). */
double mla_cuda_host_wait_ms(void);
/* f32 ↔ bf16 between buffers of equal length. */
mla_status mla_cuda_cast(const mla_cuda_buf* x, mla_cuda_buf* y);

/* As the CPU ops; w may be bf16 (activations are rounded to bf16, accumulation in f32); with bf16 w, x may be
   the caller's bf16 copy of its activations (no rounding pass then). */
mla_status mla_cuda_linear(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* b, mla_cuda_buf* y, int64_t M, int64_t K, int64_t N);
/* ys[i] [M, N_i] = x [M, K] · ws[i] [N_i, K]ᵀ for i < count ≤ 4 (bf16 weights, M ≤ 4) in one launch; an error, with nothing
   launched, where the one-pass kernel does not take one of them (the caller runs them one linear each). */
mla_status mla_cuda_linear_many(const mla_cuda_buf* x, const mla_cuda_buf* const* ws, mla_cuda_buf* const* ys, int32_t count, int64_t M, int64_t K);
/* w may be bf16: dy (and x for dw, unless x is already bf16) are rounded to bf16, products accumulate in
   f32; with bf16 w, dy may be bf16 too (then no db). accumulate_dx / accumulate_dw != 0 add the gradient into dx / dw (a gradient with other consumers,
   a flat gradient buffer) instead of overwriting it. */
mla_status mla_cuda_linear_backward(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* dy, mla_cuda_buf* dx, mla_cuda_buf* dw, mla_cuda_buf* db, int64_t M, int64_t K, int64_t N, int32_t accumulate_dx, int32_t accumulate_dw);
/* rmsnorm and swiglu: y may be bf16 (an output that only bf16 products read). */
mla_status mla_cuda_rmsnorm(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t rows, int64_t D, float eps);
mla_status mla_cuda_rmsnorm_backward(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* dy, mla_cuda_buf* dx, mla_cuda_buf* dw, int64_t rows, int64_t D, float eps);
mla_status mla_cuda_rope(const mla_cuda_buf* x, mla_cuda_buf* y, const int32_t* positions, const double* inv_freq, int64_t n_freq, int64_t T, int64_t H, int64_t Dh, int64_t rotary_dims, int32_t sign);
/* Per-head products with group-shared weights: y[t,h,:] = w[h/(H/G)]·x[t,h,:], x[T,H,K] f32, w[G,N,K] f32 or bf16, y[T,H,N] f32. */
mla_status mla_cuda_head_linear(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N);
/* head_linear with w stored k-major, [G, K, N] (MLA's k_up_proj as stored): y[t,h,:] = x[t,h,:]·w[h/(H/G)]. */
mla_status mla_cuda_head_linear_kn(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N);
/* Attention of B independent sequences of equal length: q[B·T,H,Dh], k[B·S,Hkv,Dh], v[B·S,Hkv,Dv] →
   o[B·T,H,Dv]. bf16 != 0: the GEMM route rounds its GEMM inputs to bf16 (tensor cores), scores,
   softmax and accumulation stay f32. lse (optional, f32 [B·H·T]): where the fused tensor-core kernels
   run, they leave their row log-sum-exp there for the backward and *saved becomes 1; where cuDNN runs
   (MHA2MLA_CUDA_ATTENTION=cudnn), its statistics and *saved becomes 2; else 0. q16, k16, v16
   (optional, bf16 of q's, k's, v's size): copies of q, k, v rounded to bf16 that the caller keeps,
   read instead of rounding again; o16 (optional, bf16 of o's size): receives o rounded to bf16. */
mla_status mla_cuda_attention(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, mla_cuda_buf* o, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window, int32_t bf16, mla_cuda_buf* lse, int32_t* saved, const mla_cuda_buf* q16, const mla_cuda_buf* k16, const mla_cuda_buf* v16, mla_cuda_buf* o16);
/* Gradients of mla_cuda_attention: dq[B·T,H,Dh], dk[B·S,Hkv,Dh], dv[B·S,Hkv,Dv] from dout[B·T,H,Dv]
   (overwritten). o and lse: the forward's output and saved statistics (both or neither; only pass lse
   the forward marked saved, and its *saved as saved_kind), so the route that made them need not
   recompute them. q16, k16, v16, o16 (optional): the bf16 copies of q, k, v and of the forward's o
   (its o16), read instead of rounding again. */
mla_status mla_cuda_attention_backward(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, const mla_cuda_buf* dout, mla_cuda_buf* dq, mla_cuda_buf* dk, mla_cuda_buf* dv, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window, int32_t bf16, const mla_cuda_buf* o, const mla_cuda_buf* lse, int32_t saved_kind, const mla_cuda_buf* q16, const mla_cuda_buf* k16, const mla_cuda_buf* v16, const mla_cuda_buf* o16);
/* MLA attention on the latent cache: qr[T,H,Dr], kr[S,Hkv,Dr], qc[T,H,L], c[S,L] → o[T,H,L]. */
mla_status mla_cuda_latent_attention(const mla_cuda_buf* qr, const mla_cuda_buf* kr, const mla_cuda_buf* qc, const mla_cuda_buf* c, mla_cuda_buf* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window);
/* The same two for a single query row (decode, T = 1) through cuBLAS: scores of all heads by GEMM
   (strided-batched over KV heads), a softmax kernel, a second GEMM on the values / latents. */
mla_status mla_cuda_attention_decode(const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, mla_cuda_buf* o, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window);
mla_status mla_cuda_latent_attention_decode(const mla_cuda_buf* qr, const mla_cuda_buf* kr, const mla_cuda_buf* qc, const mla_cuda_buf* c, mla_cuda_buf* o, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window);
/* Decode of B sequences against their own caches in one call (decode_batch.cu): a two-part key
   (q1·k1 + q2·k2; MHA passes q2 = NULL, MLA the latent as k1 and v and the rope keys as k2), per
   sequence b the keys 0 … pos[b] of its cache (spare rows after them ignored), head groups g(h) = h / (H/G).
   q1 [B,H,D1], k1s[b] [≥pos[b]+1,G1,D1], q2 [B,H,D2], k2s[b] [..,G2,D2], vs[b] [..,Gv,Dv] → o [B,H,Dv]. */
mla_status mla_cuda_decode_attention_batch(const mla_cuda_buf* q1, const mla_cuda_buf* const* k1s, int64_t G1, int64_t D1, const mla_cuda_buf* q2, const mla_cuda_buf* const* k2s, int64_t G2, int64_t D2, const mla_cuda_buf* const* vs, int64_t Gv, int64_t Dv, const int32_t* pos, mla_cuda_buf* o, int64_t B, int64_t H, float scale, int64_t window);
/* Row b of src [B, n] into dsts[b] at element offsets[b] (each sequence's new cache row). */
mla_status mla_cuda_scatter_rows(const mla_cuda_buf* src, mla_cuda_buf* const* dsts, const int64_t* offsets, int64_t B, int64_t n);
mla_status mla_cuda_swiglu(const mla_cuda_buf* gate, const mla_cuda_buf* up, mla_cuda_buf* y, int64_t n);
mla_status mla_cuda_swiglu_backward(const mla_cuda_buf* gate, const mla_cuda_buf* up, const mla_cuda_buf* dy, mla_cuda_buf* dgate, mla_cuda_buf* dup, int64_t n);
/* y = sa·a + sb·b (b may be NULL). */
mla_status mla_cuda_axpby(const mla_cuda_buf* a, const mla_cuda_buf* b, mla_cuda_buf* y, float sa, float sb, int64_t n);
mla_status mla_cuda_embedding(const mla_cuda_buf* table, const int32_t* ids, mla_cuda_buf* y, int64_t T, int64_t V, int64_t D);
mla_status mla_cuda_embedding_backward(const int32_t* ids, const mla_cuda_buf* dy, mla_cuda_buf* dtable, int64_t T, int64_t V, int64_t D);
/* loss[T] is a host array (skipped when NULL); grad a device buffer (skipped when NULL). */
mla_status mla_cuda_cross_entropy(const mla_cuda_buf* logits, const int32_t* targets, double* loss, mla_cuda_buf* grad, float scale, int64_t T, int64_t V);
/* Per row of logits [T, V]: log-softmax of targets[t] (−1: NaN) into logprob[T], and the top (≤ 20) most likely ids and
   their log-probabilities into top_ids/top_lp [T, top]; host arrays, filled before it returns. */
mla_status mla_cuda_row_logprobs(const mla_cuda_buf* logits, const int32_t* targets, int64_t T, int64_t V, int32_t top, float* logprob, int32_t* top_ids, float* top_lp);
/* Each row's arg-max of logits [T, V] f32 into the host array ids [T] (the first id of the largest value; NaN and −inf never taken; −1 where a row holds no other). */
mla_status mla_cuda_row_argmax(const mla_cuda_buf* logits, int64_t T, int64_t V, int32_t* ids);
/* The training step's form: per-row losses into the f32 device buffer loss from loss_offset (no host wait),
   grad [T,V] f32 or bf16 on the device. */
mla_status mla_cuda_cross_entropy_device(const mla_cuda_buf* logits, const int32_t* targets, mla_cuda_buf* loss, int64_t loss_offset, mla_cuda_buf* grad, float scale, int64_t T, int64_t V);
/* Distillation: loss[T] = τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)) on the host; grad[T,V] = scale·τ·(p_s − p_t). */
mla_status mla_cuda_kl_divergence(const mla_cuda_buf* student, const mla_cuda_buf* teacher, double* loss, mla_cuda_buf* grad, float temperature, float scale, int64_t T, int64_t V);
/* y[m, offy + j] = x[m, offx + j] for j < w (rows of length Nx and Ny): concat and split. */
mla_status mla_cuda_copy_cols(const mla_cuda_buf* x, mla_cuda_buf* y, int64_t M, int64_t Nx, int64_t offx, int64_t Ny, int64_t offy, int64_t w);
mla_status mla_cuda_gather_cols(const mla_cuda_buf* x, const int32_t* idx, mla_cuda_buf* y, int64_t M, int64_t N, int64_t K);
mla_status mla_cuda_scatter_cols(const mla_cuda_buf* dy, const int32_t* idx, mla_cuda_buf* y, int64_t M, int64_t K, int64_t N);

/* ---- training state on the device (optim.cu): flat f32 buffers of every trainable parameter ---- */
/* x = 0. */
mla_status mla_cuda_fill_zero(mla_cuda_buf* x);
/* *out (host) = Σ x² over the f32 buffer, accumulated in double. */
mla_status mla_cuda_sum_squares(const mla_cuda_buf* x, double* out);
/* One AdamW step in place on p[n] with gradient grad_scale·g (global-norm clipping folded in), as
   mla_cpu_adamw; when shadow (bf16, n) is not NULL it receives the updated p rounded to bf16 (the
   GEMM copy of mixed-precision training). */
mla_status mla_cuda_adamw(mla_cuda_buf* p, const mla_cuda_buf* g, mla_cuda_buf* m, mla_cuda_buf* v, mla_cuda_buf* shadow, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2, float grad_scale);

/* 2-norm calibration as mla_cpu_pair_norms, y on the device, acc[heads, Dh/2] on the host. */
mla_status mla_cuda_pair_norms(const mla_cuda_buf* y, double* acc, int64_t T, int64_t heads, int64_t Dh);

/* float64 on host arrays, computed on the GPU (cuBLAS Dgemm, cuSOLVER Dsyevd); same contracts as the
   mla_cpu_ versions. */
mla_status mla_cuda_gram_f64(const double* A, double* G, int64_t M, int64_t N);
mla_status mla_cuda_matmul_f64(const double* X, const double* Y, double* Z, int64_t a, int64_t b, int64_t c);
mla_status mla_cuda_symmetric_eigen(const double* S, double* values, double* vectors, int64_t n);
/* The whole rank-k factorization of A[M,N] (N ≤ M) on the GPU with one upload: G = AᵀA, its
   eigendecomposition, down[k,N] = the top-k eigenvectors as rows, up[M,k] = A·downᵀ, and values[N]
   = all eigenvalues of G, descending (σ²). Safe to call from another thread (asynchronously) while the
   calling thread does no other CUDA work. */
mla_status mla_cuda_factor_cols(const double* A, int64_t M, int64_t N, int64_t k, double* down, double* up, double* values);
/* One layer's joint KV factorization from the float32 projections: A = [wk rows nope_rows[0..Mk);
   all Mv rows of wv] (D columns, built in float64 on the GPU), then as mla_cuda_factor_cols with
   N = D; down[k,D] and up[Mk+Mv, k] come back as float32 (the checkpoint's precision at most). */
mla_status mla_cuda_factor_kv(const float* wk, const float* wv, int64_t rows_k, int64_t Mv, int64_t D, const int32_t* nope_rows, int64_t Mk, int64_t k, float* down, float* up, double* values);

/* NCCL for data-parallel training (nccl.cu): opened at run time from `path` (a file or a soname);
   version e.g. 22703 for 2.27.3. unique_id: 128 bytes that rank 0 hands to every rank; init: joins the
   communicator of `world` ranks as `rank` (blocks until all have joined; one per process);
   all_reduce_sum: x = the sum of every rank's x, in place, on the backend's stream (f32, bf16, f64);
   all_reduce_host: the same for n ≤ 1024 host doubles, back when it returns; destroy: leaves it. */
mla_status mla_cuda_nccl_load(const char* path, int32_t* version);
mla_status mla_cuda_nccl_unique_id(uint8_t* out);
mla_status mla_cuda_nccl_init(const uint8_t* id, int32_t world, int32_t rank);
mla_status mla_cuda_nccl_all_reduce_sum(mla_cuda_buf* x);
mla_status mla_cuda_nccl_all_reduce_host(double* values, int64_t n);
mla_status mla_cuda_nccl_destroy(void);

/* Decode graphs (graph.cu): one decode step of B sequences recorded once and replayed.
   begin: opens a capture of the stream for a step with token ids and positions [B]; the ops that
   follow are recorded, not run (an op that cannot be recorded fails with MLA_ERR_UNSUPPORTED).
   end: the graph (null with the reason in mla_last_error); abort: ends a capture an op failed in.
   launch: writes the step's ids and positions [B] and replays it; destroy: frees it and its outputs. */
typedef struct mla_cuda_graph mla_cuda_graph;
mla_status mla_cuda_graph_begin(const int32_t* ids, const int32_t* pos, int64_t B);
mla_cuda_graph* mla_cuda_graph_end(void);
void mla_cuda_graph_abort(void);
mla_status mla_cuda_graph_launch(mla_cuda_graph* g, const int32_t* ids, const int32_t* pos, int64_t B);
void mla_cuda_graph_destroy(mla_cuda_graph* g);

#ifdef __cplusplus
}
#endif

#endif /* MLA_H */
