// Matrix products through cuBLAS (linear forward/backward, float32 or bf16 weights with float32
// accumulation) and the float64 linear algebra of the conversion (Gram, product, symmetric eigen
// through cuSOLVER). Row-major arrays are handed to column-major cuBLAS as their transposes.
#include <vector>
#include "common.cuh"

using mla::ctx;

__global__ void f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(x[i]);
}

__global__ void bf16_to_f32(const __nv_bfloat16* x, float* y, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = __bfloat162float(x[i]);
}

__global__ void add_bias_rows(float* y, const float* b, int64_t M, int64_t N) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < M * N) y[i] += b[i % N];
}

// db[n] = Σ_m dy[m, n]: one thread per column, rows walked in order (deterministic).
__global__ void column_sums(const float* dy, float* db, int64_t M, int64_t N) {
  const int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (n >= N) return;
  double s = 0;
  for (int64_t m = 0; m < M; m++) s += dy[m * N + n];
  db[n] = (float)s;
}

namespace mla {
mla_status widen_bf16(const __nv_bfloat16* x, float* y, int64_t n) {
  if (n > 0) bf16_to_f32<<<blocks_for(n, 256), 256, 0, ctx()->stream>>>(x, y, n);
  KERNEL_CHECK();
  return MLA_OK;
}
mla_status narrow_f32(const float* x, __nv_bfloat16* y, int64_t n) {
  if (n > 0) f32_to_bf16<<<blocks_for(n, 256), 256, 0, ctx()->stream>>>(x, y, n);
  KERNEL_CHECK();
  return MLA_OK;
}
}  // namespace mla

extern "C" mla_status mla_cuda_cast(const mla_cuda_buf* x, mla_cuda_buf* y) {
  NEED_CTX();
  MLA_CHECK(x && y && x->n == y->n, "cast: size mismatch");
  const int64_t n = x->n;
  if (x->dtype == MLA_F32 && y->dtype == MLA_BF16) f32_to_bf16<<<blocks_for(n, 256), 256, 0, ctx()->stream>>>((const float*)x->ptr, (__nv_bfloat16*)y->ptr, n);
  else if (x->dtype == MLA_BF16 && y->dtype == MLA_F32) bf16_to_f32<<<blocks_for(n, 256), 256, 0, ctx()->stream>>>((const __nv_bfloat16*)x->ptr, (float*)y->ptr, n);
  else return MLA_FAIL(MLA_ERR_ARGUMENT, "cast: only f32 ↔ bf16");
  KERNEL_CHECK();
  return MLA_OK;
}

extern "C" mla_status mla_cuda_linear(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* b, mla_cuda_buf* y, int64_t M, int64_t K, int64_t N) {
  NEED_CTX();
  MLA_CHECK(x && w && y && (x->dtype == MLA_F32 || (x->dtype == MLA_BF16 && w->dtype == MLA_BF16)) && y->dtype == MLA_F32, "linear: y f32, x f32 (or bf16 with bf16 w)");
  MLA_CHECK(x->n == M * K && w->n == N * K && y->n == M * N && (!b || b->n == N), "linear: buffer sizes do not match M, K, N");
  if (M == 0 || N == 0) return MLA_OK;
  const float one = 1, zero = 0;
  cublasHandle_t h = ctx()->blas;
  if (K == 0) {
    // Nothing to sum (cuBLAS rejects a zero leading dimension): y is the bias in every row, or zeros.
    CUDA_TRY(cudaMemsetAsync(y->ptr, 0, sizeof(float) * M * N, ctx()->stream));
  } else if (w->dtype == MLA_F32) {
    CUBLAS_TRY(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, (const float*)w->ptr, (int)K, (const float*)x->ptr, (int)K, &zero, (float*)y->ptr, (int)N));
  } else if (w->dtype == MLA_BF16 && mla::gemv_takes(x->ptr, x->dtype == MLA_BF16, w->ptr, M, K, N, 1)) {
    // A few rows (decode): one pass over the weights, x rounded as it is read.
    if (mla_status e = mla::gemv_bf16(x->ptr, x->dtype == MLA_BF16, (const __nv_bfloat16*)w->ptr, y->ptr, false, 1, M, 1, K, N)) return e;
  } else if (w->dtype == MLA_BF16) {
    // bf16 weights stay bf16: the activations are rounded to bf16 and the product accumulates in f32.
    // A bf16 x is the caller's rounded copy of its activations (kept for every product that reads them).
    const __nv_bfloat16* xb = (const __nv_bfloat16*)x->ptr;
    if (x->dtype == MLA_F32) {
      mla_status st;
      auto* scratch = (__nv_bfloat16*)mla::scratch(sizeof(__nv_bfloat16) * M * K, &st);
      if (!scratch) return st;
      f32_to_bf16<<<blocks_for(M * K, 256), 256, 0, ctx()->stream>>>((const float*)x->ptr, scratch, M * K);
      KERNEL_CHECK();
      xb = scratch;
    }
    CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w->ptr, CUDA_R_16BF, (int)K, xb, CUDA_R_16BF, (int)K, &zero, y->ptr, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    return MLA_FAIL(MLA_ERR_ARGUMENT, "linear: w must be f32 or bf16");
  }
  if (b) {
    add_bias_rows<<<blocks_for(M * N, 256), 256, 0, ctx()->stream>>>((float*)y->ptr, (const float*)b->ptr, M, N);
    KERNEL_CHECK();
  }
  return MLA_OK;
}

// accumulate_dx / accumulate_dw: add the product into dx / dw (GEMM β = 1) instead of overwriting, so a
// gradient with several consumers is summed without a separate add over it.
extern "C" mla_status mla_cuda_linear_backward(const mla_cuda_buf* x, const mla_cuda_buf* w, const mla_cuda_buf* dy, mla_cuda_buf* dx, mla_cuda_buf* dw, mla_cuda_buf* db, int64_t M, int64_t K, int64_t N, int32_t accumulate_dx, int32_t accumulate_dw) {
  NEED_CTX();
  MLA_CHECK(x && w && dy && (w->dtype == MLA_F32 || w->dtype == MLA_BF16) && (x->dtype == MLA_F32 || (x->dtype == MLA_BF16 && w->dtype == MLA_BF16)) && (dy->dtype == MLA_F32 || (dy->dtype == MLA_BF16 && w->dtype == MLA_BF16 && !db)),
            "linear_backward: w f32 or bf16; x and dy f32 (or, with bf16 w, bf16; dy bf16 only without db)");
  MLA_CHECK(x->n == M * K && w->n == N * K && dy->n == M * N && (!dx || (dx->n == M * K && dx->dtype == MLA_F32)) && (!dw || (dw->n == N * K && dw->dtype == MLA_F32)), "linear_backward: buffer sizes do not match M, K, N");
  const float one = 1;
  const float beta_w = accumulate_dw ? 1.0f : 0.0f, beta_x = accumulate_dx ? 1.0f : 0.0f;
  cublasHandle_t h = ctx()->blas;
  cudaStream_t s = ctx()->stream;
  if (w->dtype == MLA_BF16) {
    // Mixed precision: dy and x rounded to bf16 once, both products on tensor cores with f32 accumulation.
    mla_status st;
    const bool convert_x = dw && x->dtype == MLA_F32, convert_dy = dy->dtype == MLA_F32;
    auto* scratch = (__nv_bfloat16*)mla::scratch(sizeof(__nv_bfloat16) * ((convert_dy ? M * N : 0) + (convert_x ? M * K : 0) + 1), &st);
    if (!scratch) return st;
    const __nv_bfloat16* dyb = convert_dy ? scratch : (const __nv_bfloat16*)dy->ptr;
    __nv_bfloat16* x_scratch = scratch + (convert_dy ? M * N : 0);
    const __nv_bfloat16* xb = convert_x ? x_scratch : (const __nv_bfloat16*)x->ptr;
    if (convert_dy && M * N) f32_to_bf16<<<blocks_for(M * N, 256), 256, 0, s>>>((const float*)dy->ptr, scratch, M * N);
    if (convert_x && M * K) f32_to_bf16<<<blocks_for(M * K, 256), 256, 0, s>>>((const float*)x->ptr, x_scratch, M * K);
    KERNEL_CHECK();
    if (dx && M > 0 && K > 0) {
      if (N == 0) {
        if (!accumulate_dx) CUDA_TRY(cudaMemsetAsync(dx->ptr, 0, sizeof(float) * M * K, s));
      } else CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, w->ptr, CUDA_R_16BF, (int)K, dyb, CUDA_R_16BF, (int)N, &beta_x, dx->ptr, CUDA_R_32F, (int)K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (dw && N > 0 && K > 0) {
      if (M == 0) {
        if (!accumulate_dw) CUDA_TRY(cudaMemsetAsync(dw->ptr, 0, sizeof(float) * N * K, s));
      } else CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)M, &one, xb, CUDA_R_16BF, (int)K, dyb, CUDA_R_16BF, (int)N, &beta_w, dw->ptr, CUDA_R_32F, (int)K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  } else {
    if (dx && M > 0 && K > 0) {
      if (N == 0) {
        if (!accumulate_dx) CUDA_TRY(cudaMemsetAsync(dx->ptr, 0, sizeof(float) * M * K, s));
      } else CUBLAS_TRY(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, (const float*)w->ptr, (int)K, (const float*)dy->ptr, (int)N, &beta_x, (float*)dx->ptr, (int)K));
    }
    if (dw && N > 0 && K > 0) {
      if (M == 0) {
        if (!accumulate_dw) CUDA_TRY(cudaMemsetAsync(dw->ptr, 0, sizeof(float) * N * K, s));
      } else CUBLAS_TRY(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)M, &one, (const float*)x->ptr, (int)K, (const float*)dy->ptr, (int)N, &beta_w, (float*)dw->ptr, (int)K));
    }
  }
  if (db && N > 0) {
    column_sums<<<blocks_for(N, 128), 128, 0, s>>>((const float*)dy->ptr, (float*)db->ptr, M, N);
    KERNEL_CHECK();
  }
  return MLA_OK;
}

namespace {
// y[t, h, :] = w[h / (H/G)]·x[t, h, :] through cuBLAS, w [G, N, K] (kMajor false) or [G, K, N] (true): for
// each position j of a head in its group, one strided-batched GEMM over the G groups (head g·group + j:
// its rows of x and y have stride H·K and H·N, the batches stride group·K and group·N). bf16 weights take
// the activations rounded to bf16 once, as linear does (a bf16 x is that rounding already); y f32 or bf16.
mla_status head_products_cublas(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N, bool kMajor) {
  const int64_t group = H / G;
  const float one = 1, zero = 0;
  const void* xs = x->ptr;
  cudaDataType_t type = x->dtype == MLA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t ytype = y->dtype == MLA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const size_t ys = y->dtype == MLA_BF16 ? 2 : 4;
  if (w->dtype == MLA_BF16 && x->dtype == MLA_F32) {
    mla_status st;
    auto* xb = (__nv_bfloat16*)mla::scratch(sizeof(__nv_bfloat16) * T * H * K, &st);
    if (!xb) return st;
    f32_to_bf16<<<blocks_for(T * H * K, 256), 256, 0, ctx()->stream>>>((const float*)x->ptr, xb, T * H * K);
    KERNEL_CHECK();
    xs = xb;
    type = CUDA_R_16BF;
  }
  const size_t es = type == CUDA_R_16BF ? 2 : 4;
  for (int64_t j = 0; j < group; j++)
    CUBLAS_TRY(cublasGemmStridedBatchedEx(ctx()->blas, kMajor ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)T, (int)K, &one, w->ptr, type, kMajor ? (int)N : (int)K, N * K, (const char*)xs + j * K * es, type, (int)(H * K), group * K,
                                          &zero, (char*)y->ptr + j * N * ys, ytype, (int)(H * N), group * N, (int)G, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return MLA_OK;
}

}  // namespace

// y [T, H, N] = x [T, H, K] through each head's group of w: [G, N, K] (head_linear) or k-major [G, K, N]
// (head_linear_kn: MLA's k_up_proj as stored, no transpose kept beside it). A decode step's few rows take
// the gemv kernels (gemv.cu, head_kn.cu), other calls cuBLAS. With bf16 weights x and y may be bf16 (a
// product input rounded once by its writer; an output only bf16 products read), f32 weights take f32.
static mla_status head_products(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N, bool kMajor) {
  NEED_CTX();
  const char* op = kMajor ? "head_linear_kn" : "head_linear";
  MLA_CHECK(x && w && y && (w->dtype == MLA_BF16 ? (x->dtype == MLA_F32 || x->dtype == MLA_BF16) && (y->dtype == MLA_F32 || y->dtype == MLA_BF16) : w->dtype == MLA_F32 && x->dtype == MLA_F32 && y->dtype == MLA_F32), std::string(op) + ": w f32 with x and y f32, or w bf16 with x and y each f32 or bf16");
  MLA_CHECK(G > 0 && H % G == 0 && x->n == T * H * K && w->n == G * N * K && y->n == T * H * N, std::string(op) + (kMajor ? ": buffers x[T,H,K], w[G,K,N], y[T,H,N]" : ": buffers x[T,H,K], w[G,N,K], y[T,H,N]") + " with H a multiple of G");
  if (T == 0 || N == 0) return MLA_OK;
  if (K == 0) {
    CUDA_TRY(cudaMemsetAsync(y->ptr, 0, (y->dtype == MLA_BF16 ? 2 : 4) * T * H * N, ctx()->stream));
    return MLA_OK;
  }
  const int64_t group = H / G, rows = T * group;  // decode: T·group rows per group
  const bool bf16 = w->dtype == MLA_BF16;
  const bool xb = x->dtype == MLA_BF16, yb = y->dtype == MLA_BF16;
  if (bf16 && !kMajor && mla::gemv_takes(x->ptr, xb, w->ptr, rows, K, N, G)) return mla::gemv_bf16(x->ptr, xb, (const __nv_bfloat16*)w->ptr, y->ptr, yb, G, rows, group, K, N);
  if (bf16 && kMajor && mla::head_kn_takes(w->ptr, G, rows, K, N)) return mla::head_kn_bf16(x->ptr, xb, (const __nv_bfloat16*)w->ptr, y->ptr, yb, G, rows, group, K, N);
  return head_products_cublas(x, w, y, T, H, G, K, N, kMajor);
}

extern "C" mla_status mla_cuda_head_linear(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N) { return head_products(x, w, y, T, H, G, K, N, false); }

extern "C" mla_status mla_cuda_head_linear_kn(const mla_cuda_buf* x, const mla_cuda_buf* w, mla_cuda_buf* y, int64_t T, int64_t H, int64_t G, int64_t K, int64_t N) { return head_products(x, w, y, T, H, G, K, N, true); }

// ---- float64 routines on host arrays (the conversion's SVD); each uploads, computes, downloads ----

namespace {
struct DevF64 {
  double* p = nullptr;
  ~DevF64() {
    if (p) cudaFreeAsync(p, ctx()->stream);
  }
};
}  // namespace

#define DEV_ALLOC(buf, count)                                                                                              \
  do {                                                                                                                     \
    cudaError_t e_ = cudaMallocAsync(&(buf).p, sizeof(double) * (size_t)(count), ctx()->stream);                          \
    if (e_ != cudaSuccess) {                                                                                               \
      cudaGetLastError();                                                                                                  \
      return MLA_FAIL(MLA_ERR_MEMORY, "out of GPU memory for a float64 " #buf " of " + std::to_string((int64_t)(count) * 8 >> 20) + " MiB"); \
    }                                                                                                                      \
  } while (0)

extern "C" mla_status mla_cuda_gram_f64(const double* A, double* G, int64_t M, int64_t N) {
  NEED_CTX();
  MLA_CHECK(A && G && M >= 0 && N > 0, "gram_f64: bad arguments");
  DevF64 a, g;
  DEV_ALLOC(a, M * N + 1);
  DEV_ALLOC(g, N * N);
  cudaStream_t s = ctx()->stream;
  CUDA_TRY(cudaMemcpyAsync(a.p, A, sizeof(double) * M * N, cudaMemcpyHostToDevice, s));
  const double one = 1, zero = 0;
  // Row-major A[M,N] is column-major Aᵀ (N×M); AᵀA = Aᵀ·(Aᵀ)ᵀ.
  if (M == 0) CUDA_TRY(cudaMemsetAsync(g.p, 0, sizeof(double) * N * N, s));
  else CUBLAS_TRY(cublasDgemm(ctx()->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, (int)N, (int)M, &one, a.p, (int)N, a.p, (int)N, &zero, g.p, (int)N));
  CUDA_TRY(cudaMemcpyAsync(G, g.p, sizeof(double) * N * N, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaStreamSynchronize(s));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_matmul_f64(const double* X, const double* Y, double* Z, int64_t a, int64_t b, int64_t c) {
  NEED_CTX();
  MLA_CHECK(X && Y && Z && a > 0 && b >= 0 && c > 0, "matmul_f64: bad arguments");
  DevF64 x, y, z;
  DEV_ALLOC(x, a * b + 1);
  DEV_ALLOC(y, b * c + 1);
  DEV_ALLOC(z, a * c);
  cudaStream_t s = ctx()->stream;
  CUDA_TRY(cudaMemcpyAsync(x.p, X, sizeof(double) * a * b, cudaMemcpyHostToDevice, s));
  CUDA_TRY(cudaMemcpyAsync(y.p, Y, sizeof(double) * b * c, cudaMemcpyHostToDevice, s));
  const double one = 1, zero = 0;
  if (b == 0) CUDA_TRY(cudaMemsetAsync(z.p, 0, sizeof(double) * a * c, s));
  else CUBLAS_TRY(cublasDgemm(ctx()->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)c, (int)a, (int)b, &one, y.p, (int)c, x.p, (int)b, &zero, z.p, (int)c));
  CUDA_TRY(cudaMemcpyAsync(Z, z.p, sizeof(double) * a * c, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaStreamSynchronize(s));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_symmetric_eigen(const double* S, double* values, double* vectors, int64_t n) {
  NEED_CTX();
  MLA_CHECK(S && values && vectors && n > 0, "symmetric_eigen: bad arguments");
  cudaStream_t s = ctx()->stream;
  DevF64 m, w, work;
  DEV_ALLOC(m, n * n);
  DEV_ALLOC(w, n);
  CUDA_TRY(cudaMemcpyAsync(m.p, S, sizeof(double) * n * n, cudaMemcpyHostToDevice, s));
  int lwork = 0;
  CUSOLVER_TRY(cusolverDnDsyevd_bufferSize(ctx()->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)n, m.p, (int)n, w.p, &lwork));
  DEV_ALLOC(work, (int64_t)lwork + 1);
  int* info = nullptr;
  CUDA_TRY(cudaMallocAsync(&info, sizeof(int), s));
  cusolverStatus_t st = cusolverDnDsyevd(ctx()->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)n, m.p, (int)n, w.p, work.p, lwork, info);
  int h_info = 0;
  cudaMemcpyAsync(&h_info, info, sizeof(int), cudaMemcpyDeviceToHost, s);
  // Column j of the column-major result is eigenvector j (ascending): row j when read row-major.
  std::vector<double> asc(n * n), vals(n);
  cudaMemcpyAsync(asc.data(), m.p, sizeof(double) * n * n, cudaMemcpyDeviceToHost, s);
  cudaMemcpyAsync(vals.data(), w.p, sizeof(double) * n, cudaMemcpyDeviceToHost, s);
  CUDA_TRY(cudaStreamSynchronize(s));
  cudaFreeAsync(info, s);
  if (st != CUSOLVER_STATUS_SUCCESS) return MLA_FAIL(MLA_ERR_INTERNAL, "cusolverDnDsyevd: status " + std::to_string((int)st));
  if (h_info != 0) return MLA_FAIL(MLA_ERR_INTERNAL, "cusolverDnDsyevd: info " + std::to_string(h_info) + " (did not converge or bad input)");
  for (int64_t i = 0; i < n; i++) {
    values[i] = vals[n - 1 - i];
    std::copy(asc.begin() + (n - 1 - i) * n, asc.begin() + (n - i) * n, vectors + i * n);
  }
  return MLA_OK;
}

// down[j, :] = column N−1−j of the column-major eigenvector matrix (eigenvalues ascending → descending).
__global__ void k_top_columns(const double* V, double* down, int64_t N, int64_t k) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= k * N) return;
  const int64_t j = i / N, r = i % N;
  down[i] = V[(N - 1 - j) * N + r];
}

namespace {
// A stream-ordered device allocation of any element type, freed when it goes out of scope.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  ~DevBuf() {
    if (p) cudaFreeAsync(p, ctx()->stream);
  }
  cudaError_t alloc(int64_t n) { return cudaMallocAsync(&p, sizeof(T) * (size_t)(n > 0 ? n : 1), ctx()->stream); }
};

// The eigen route of a truncated SVD on data already on the device: for a [M, N] (row-major),
// d [k, N] = the top-k eigenvectors of aᵀa (right singular vectors) and u [M, k] = a·dᵀ, so that
// a ≈ u·d; `values` (host, N) gets the eigenvalues of aᵀa, descending. Both factor_* entry points
// end here; they differ only in how a reaches the device and in which precision the factors leave.
mla_status factor_resident(const double* a, int64_t M, int64_t N, int64_t k, double* d, double* u, double* values) {
  cudaStream_t s = ctx()->stream;
  DevF64 g, w, work;
  DEV_ALLOC(g, N * N);
  DEV_ALLOC(w, N);
  const double one = 1, zero = 0;
  CUBLAS_TRY(cublasDgemm(ctx()->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, (int)N, (int)M, &one, a, (int)N, a, (int)N, &zero, g.p, (int)N));
  int lwork = 0;
  CUSOLVER_TRY(cusolverDnDsyevd_bufferSize(ctx()->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)N, g.p, (int)N, w.p, &lwork));
  DEV_ALLOC(work, (int64_t)lwork + 1);
  DevBuf<int> info;
  CUDA_TRY(info.alloc(1));
  CUSOLVER_TRY(cusolverDnDsyevd(ctx()->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)N, g.p, (int)N, w.p, work.p, lwork, info.p));
  k_top_columns<<<blocks_for(k * N, 256), 256, 0, s>>>(g.p, d, N, k);
  KERNEL_CHECK();
  // u[M,k] row-major = a·V_k: column-major uᵀ (k×M) = V_kᵀ·aᵀ, with d (row-major [k,N]) = column-major V_k.
  CUBLAS_TRY(cublasDgemm(ctx()->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)k, (int)M, (int)N, &one, d, (int)N, a, (int)N, &zero, u, (int)k));
  std::vector<double> asc(N);
  int h_info = 0;
  CUDA_TRY(cudaMemcpyAsync(&h_info, info.p, sizeof(int), cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaMemcpyAsync(asc.data(), w.p, sizeof(double) * N, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaStreamSynchronize(s));
  if (h_info != 0) return MLA_FAIL(MLA_ERR_INTERNAL, "cusolverDnDsyevd: info " + std::to_string(h_info) + " (did not converge or bad input)");
  for (int64_t i = 0; i < N; i++) values[i] = asc[N - 1 - i];
  return MLA_OK;
}
}  // namespace

extern "C" mla_status mla_cuda_factor_cols(const double* A, int64_t M, int64_t N, int64_t k, double* down, double* up, double* values) {
  NEED_CTX();
  MLA_CHECK(A && down && up && values && M > 0 && N > 0 && k > 0 && k <= N && k <= M, "factor_cols: bad arguments");
  CUDA_TRY(cudaSetDevice(ctx()->device));  // may run on a koffi worker thread
  cudaStream_t s = ctx()->stream;
  DevF64 a, d, u;
  DEV_ALLOC(a, M * N);
  DEV_ALLOC(d, k * N);
  DEV_ALLOC(u, M * k);
  CUDA_TRY(cudaMemcpyAsync(a.p, A, sizeof(double) * M * N, cudaMemcpyHostToDevice, s));
  const mla_status st = factor_resident(a.p, M, N, k, d.p, u.p, values);
  if (st != MLA_OK) return st;
  CUDA_TRY(cudaMemcpyAsync(down, d.p, sizeof(double) * k * N, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaMemcpyAsync(up, u.p, sizeof(double) * M * k, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaStreamSynchronize(s));
  return MLA_OK;
}

// A[i, :] = wk[nope_rows[i], :] for i < Mk, then all rows of wv, as float64.
__global__ void k_gather_kv(const float* wk, const float* wv, const int32_t* nope_rows, double* A, int64_t Mk, int64_t Mv, int64_t D) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= (Mk + Mv) * D) return;
  const int64_t r = i / D, d = i % D;
  A[i] = r < Mk ? (double)wk[(int64_t)nope_rows[r] * D + d] : (double)wv[(r - Mk) * D + d];
}

__global__ void f64_to_f32(const double* x, float* y, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = (float)x[i];
}

extern "C" mla_status mla_cuda_factor_kv(const float* wk, const float* wv, int64_t rows_k, int64_t Mv, int64_t D, const int32_t* nope_rows, int64_t Mk, int64_t k, float* down, float* up, double* values) {
  NEED_CTX();
  const int64_t M = Mk + Mv;
  MLA_CHECK(wk && wv && nope_rows && down && up && values && D > 0 && Mk >= 0 && Mv > 0 && k > 0 && k <= D && D <= M, "factor_kv: bad arguments (needs D ≤ Mk + Mv and 0 < k ≤ D)");
  for (int64_t i = 0; i < Mk; i++) MLA_CHECK(nope_rows[i] >= 0 && nope_rows[i] < rows_k, "factor_kv: key row " + std::to_string(nope_rows[i]) + " outside [0, " + std::to_string(rows_k) + ")");
  CUDA_TRY(cudaSetDevice(ctx()->device));  // may run on a koffi worker thread
  cudaStream_t s = ctx()->stream;
  DevBuf<float> dk, dv, fdown, fup;
  DevBuf<int32_t> drows;
  if (dk.alloc(rows_k * D) || dv.alloc(Mv * D) || fdown.alloc(k * D) || fup.alloc(M * k) || drows.alloc(Mk)) {
    cudaGetLastError();
    return MLA_FAIL(MLA_ERR_MEMORY, "out of GPU memory for the key/value projections of a layer");
  }
  DevF64 a, d, u;
  DEV_ALLOC(a, M * D);
  DEV_ALLOC(d, k * D);
  DEV_ALLOC(u, M * k);
  CUDA_TRY(cudaMemcpyAsync(dk.p, wk, sizeof(float) * rows_k * D, cudaMemcpyHostToDevice, s));
  CUDA_TRY(cudaMemcpyAsync(dv.p, wv, sizeof(float) * Mv * D, cudaMemcpyHostToDevice, s));
  if (Mk > 0) CUDA_TRY(cudaMemcpyAsync(drows.p, nope_rows, sizeof(int32_t) * Mk, cudaMemcpyHostToDevice, s));
  k_gather_kv<<<blocks_for(M * D, 256), 256, 0, s>>>(dk.p, dv.p, drows.p, a.p, Mk, Mv, D);
  KERNEL_CHECK();
  const mla_status st = factor_resident(a.p, M, D, k, d.p, u.p, values);
  if (st != MLA_OK) return st;
  f64_to_f32<<<blocks_for(k * D, 256), 256, 0, s>>>(d.p, fdown.p, k * D);
  f64_to_f32<<<blocks_for(M * k, 256), 256, 0, s>>>(u.p, fup.p, M * k);
  KERNEL_CHECK();
  CUDA_TRY(cudaMemcpyAsync(down, fdown.p, sizeof(float) * k * D, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaMemcpyAsync(up, fup.p, sizeof(float) * M * k, cudaMemcpyDeviceToHost, s));
  CUDA_TRY(cudaStreamSynchronize(s));
  return MLA_OK;
}
