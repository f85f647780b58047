// linear forward/backward on the CPU. The forward is y = x·wᵀ with both operands K-contiguous, so
// the kernel computes a 4×4 tile of dot products with 8-wide vector accumulators (GCC/Clang vector
// extensions: AVX2 registers with -march=native, SSE pairs otherwise), two FMAs per loaded vector.
#include <climits>
#include <cstring>
#include <vector>
#include "blas.h"
#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Products below parallel_macs() multiply-adds (MHA2MLA_CPU_SERIAL_MACS; 2^20 unset) run on the calling
// thread alone. A decode step's projections
// (one row) cost less than the team's hand-off, and on a machine whose other core is busy a team
// waits for it: 1–8 ms per small product, where alone they take 0.01–0.05 ms (docs/benchmarks.md,
// "The CPU under load", eighteenth session).
static bool parallel_work(int64_t M, int64_t K, int64_t N) { return M * K * N >= mla::parallel_macs(); }

// OpenBLAS runs single-threaded inside our OpenMP team, one slice of the output per thread: two
// thread pools spinning on the same cores (OpenBLAS's and libgomp's) were slower than either alone.
static bool blas_ok(int64_t M, int64_t K, int64_t N) { return M > 0 && N > 0 && K > 0 && M < INT32_MAX && N < INT32_MAX && K < INT32_MAX; }

// 16 lanes where the build targets AVX-512 (Intel cores with two 512-bit FMA units double their
// throughput; on cores that split them it is no slower), 8 otherwise.
#ifdef __AVX512F__
#define VW 16
#else
#define VW 8
#endif
typedef float v8 __attribute__((vector_size(VW * 4)));

static inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

static inline float hsum(v8 v) {
  float s = 0;
  for (int i = 0; i < VW; i++) s += v[i];
  return s;
}

// y[m0..m0+mr, n0..n0+nr] for mr, nr ≤ 4.
static void tile(const float* x, const float* w, float* y, int64_t m0, int64_t mr, int64_t n0, int64_t nr, int64_t K, int64_t N) {
  v8 acc[4][4] = {};
  const float* xr[4];
  const float* wr[4];
  for (int i = 0; i < 4; i++) xr[i] = x + (m0 + (i < mr ? i : 0)) * K;
  for (int j = 0; j < 4; j++) wr[j] = w + (n0 + (j < nr ? j : 0)) * K;
  const int64_t K8 = K - K % VW;
  for (int64_t k = 0; k < K8; k += VW) {
    v8 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = load8(xr[i] + k);
    for (int j = 0; j < 4; j++) b[j] = load8(wr[j] + k);
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
  }
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) {
      float s = hsum(acc[i][j]);
      for (int64_t k = K8; k < K; k++) s += xr[i][k] * wr[j][k];
      y[(m0 + i) * N + n0 + j] = s;
    }
}

extern "C" mla_status mla_cpu_linear(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t K, int64_t N) {
  MLA_CHECK(M >= 0 && K >= 0 && N >= 0, "linear: negative size");
  MLA_CHECK_BUF(x, M * K, "linear: null x");
  MLA_CHECK_BUF(w, N * K, "linear: null w");
  MLA_CHECK_BUF(y, M * N, "linear: null y");
  if (M == 0 || N == 0) return MLA_OK;
  const bool team = parallel_work(M, K, N);
  if (K == 0) std::memset(y, 0, sizeof(float) * M * N);
  else if (auto sgemm = mla::openblas_sgemm(); sgemm && blas_ok(M, K, N)) {
    const int nt = team ? threads() : 1;
#pragma omp parallel for schedule(static) if (team)
    for (int c = 0; c < nt; c++) {
      const int64_t n0 = N * c / nt, n1 = N * (c + 1) / nt;
      if (n1 > n0) sgemm(mla::CblasRowMajor, mla::CblasNoTrans, mla::CblasTrans, (int)M, (int)(n1 - n0), (int)K, 1.0f, x, (int)K, w + n0 * K, (int)K, 0.0f, y + n0, (int)N);
    }
  } else {
  const int64_t mt = (M + 3) / 4, nt = (N + 3) / 4;
#pragma omp parallel for schedule(static) collapse(2) if (team)
  for (int64_t bm = 0; bm < mt; bm++)
    for (int64_t bn = 0; bn < nt; bn++) {
      const int64_t m0 = bm * 4, n0 = bn * 4;
      tile(x, w, y, m0, M - m0 < 4 ? M - m0 : 4, n0, N - n0 < 4 ? N - n0 : 4, K, N);
    }
  }
  if (b)
#pragma omp parallel for schedule(static) if (team)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) y[m * N + n] += b[n];
  return MLA_OK;
}

extern "C" mla_status mla_cpu_linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db, int64_t M, int64_t K, int64_t N) {
  MLA_CHECK(M >= 0 && K >= 0 && N >= 0, "linear_backward: negative size");
  MLA_CHECK_BUF(x, M * K, "linear_backward: null x");
  MLA_CHECK_BUF(w, N * K, "linear_backward: null w");
  MLA_CHECK_BUF(dy, M * N, "linear_backward: null dy");
  // An empty gradient arrives as NULL, like one not asked for: either way there is nothing to write.
  if (M * K == 0) dx = nullptr;
  if (N * K == 0) dw = nullptr;
  if (N == 0) db = nullptr;
  auto sgemm = mla::openblas_sgemm();
  const bool team = parallel_work(M, K, N);
  if (sgemm && blas_ok(M, K, N)) {
    const int nt = team ? threads() : 1;
#pragma omp parallel for schedule(static) if (team)
    for (int c = 0; c < nt; c++) {
      const int64_t k0 = K * c / nt, k1 = K * (c + 1) / nt, n0 = N * c / nt, n1 = N * (c + 1) / nt;
      // dx[:, k0:k1] = dy·w[:, k0:k1]; dw[n0:n1, :] = dy[:, n0:n1]ᵀ·x
      if (dx && k1 > k0) sgemm(mla::CblasRowMajor, mla::CblasNoTrans, mla::CblasNoTrans, (int)M, (int)(k1 - k0), (int)N, 1.0f, dy, (int)N, w + k0, (int)K, 0.0f, dx + k0, (int)K);
      if (dw && n1 > n0) sgemm(mla::CblasRowMajor, mla::CblasTrans, mla::CblasNoTrans, (int)(n1 - n0), (int)K, (int)M, 1.0f, dy + n0, (int)N, x, (int)K, 0.0f, dw + n0 * K, (int)K);
    }
    dx = dw = nullptr;
  }
  if (dx) {
    // dx[m,:] = Σ_n dy[m,n]·w[n,:]: rows of w scaled and added, vectorized along K.
#pragma omp parallel for schedule(static) if (team)
    for (int64_t m = 0; m < M; m++) {
      float* out = dx + m * K;
      std::memset(out, 0, sizeof(float) * K);
      for (int64_t n = 0; n < N; n++) {
        const float g = dy[m * N + n];
        if (g == 0) continue;
        const float* wr = w + n * K;
        for (int64_t k = 0; k < K; k++) out[k] += g * wr[k];
      }
    }
  }
  if (dw) {
    // dw[n,:] = Σ_m dy[m,n]·x[m,:], one output row per thread.
#pragma omp parallel for schedule(static) if (team)
    for (int64_t n = 0; n < N; n++) {
      float* out = dw + n * K;
      std::memset(out, 0, sizeof(float) * K);
      for (int64_t m = 0; m < M; m++) {
        const float g = dy[m * N + n];
        if (g == 0) continue;
        const float* xr = x + m * K;
        for (int64_t k = 0; k < K; k++) out[k] += g * xr[k];
      }
    }
  }
  if (db) {
    std::vector<double> acc(N, 0.0);
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) acc[n] += dy[m * N + n];
    for (int64_t n = 0; n < N; n++) db[n] = (float)acc[n];
  }
  return MLA_OK;
}
