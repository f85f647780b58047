// Linear algebra for the conversion SVD route, in float64: the Gram matrix AᵀA and the symmetric
// eigendecomposition (Householder tridiagonalization + implicit QL, the EISPACK tred2/tql2 pair).
// The vector matrix is stored column-major, so tred2's column loops and tql2's rotations are contiguous.
#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>
#include <vector>
#include "blas.h"
#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

typedef double v4d __attribute__((vector_size(32)));

namespace {
struct DgemmCall {
  mla::Dgemm fn;
  int ta, tb, m, n, k;
  const double *a, *b;
  int lda, ldb;
  double* c;
  int ldc;
};
void run_dgemm(void* p) {
  auto* c = static_cast<DgemmCall*>(p);
  c->fn(mla::CblasRowMajor, c->ta, c->tb, c->m, c->n, c->k, 1.0, c->a, c->lda, c->b, c->ldb, 0.0, c->c, c->ldc);
}
int omp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
bool fits_int(int64_t a, int64_t b, int64_t c) { return a > 0 && b > 0 && c > 0 && a < INT32_MAX && b < INT32_MAX && c < INT32_MAX; }
}  // namespace

extern "C" mla_status mla_cpu_gram_f64(const double* A, double* G, int64_t M, int64_t N) {
  MLA_CHECK(M >= 0 && N >= 0, "gram: negative size");
  MLA_CHECK_BUF(A, M * N, "gram: null A");
  MLA_CHECK_BUF(G, N * N, "gram: null G");
  if (M == 0) {
    std::fill(G, G + N * N, 0.0);
    return MLA_OK;
  }
  if (auto dgemm = mla::openblas_dgemm(); dgemm && fits_int(M, N, N)) {
    DgemmCall call{dgemm, mla::CblasTrans, mla::CblasNoTrans, (int)N, (int)N, (int)M, A, A, (int)N, (int)N, G, (int)N};
    mla::with_blas_threads(omp_threads(), run_dgemm, &call);
    return MLA_OK;
  }
  // At [N, M]: column i of A as a contiguous row, so G[i,j] is a dot product of two rows.
  std::vector<double> At((size_t)N * M);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++)
    for (int64_t r = 0; r < M; r++) At[(size_t)i * M + r] = A[(size_t)r * N + i];
  const int64_t M4 = M - M % 4;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < N; i++) {
    const double* a = &At[(size_t)i * M];
    for (int64_t j = i; j < N; j++) {
      const double* b = &At[(size_t)j * M];
      v4d acc = {0, 0, 0, 0};
      for (int64_t r = 0; r < M4; r += 4) {
        v4d x, y;
        __builtin_memcpy(&x, a + r, sizeof x);
        __builtin_memcpy(&y, b + r, sizeof y);
        acc += x * y;
      }
      double s = acc[0] + acc[1] + acc[2] + acc[3];
      for (int64_t r = M4; r < M; r++) s += a[r] * b[r];
      G[(size_t)i * N + j] = s;
      G[(size_t)j * N + i] = s;
    }
  }
  return MLA_OK;
}

namespace {
struct DsyevdCall {
  mla::Dsyevd fn;
  int n;
  double* a;
  double* w;
  int info;
};

void run_dsyevd(void* p) {
  auto* c = static_cast<DsyevdCall*>(p);
  const char jobz = 'V', uplo = 'L';
  int lwork = -1, liwork = -1, iwq = 0;
  double wq = 0;
  c->fn(&jobz, &uplo, &c->n, c->a, &c->n, c->w, &wq, &lwork, &iwq, &liwork, &c->info);  // workspace query
  if (c->info != 0) return;
  lwork = (int)wq;
  liwork = iwq;
  std::vector<double> work((size_t)std::max(lwork, 1));
  std::vector<int> iwork((size_t)std::max(liwork, 1));
  c->fn(&jobz, &uplo, &c->n, c->a, &c->n, c->w, work.data(), &lwork, iwork.data(), &liwork, &c->info);
}
}  // namespace

// LAPACK's divide-and-conquer dsyevd, when OpenBLAS is present: several times faster than the
// tred2/tql2 below at the sizes of a 7B conversion (n = 4096).
static bool eigen_lapack(const double* S, double* values, double* vectors, int64_t n, mla_status* st) {
  mla::Dsyevd fn = mla::lapack_dsyevd();
  if (!fn || n > INT32_MAX / 2) return false;
  std::vector<double> a(S, S + (size_t)n * n), w(n);  // symmetric: row-major = column-major
  DsyevdCall call{fn, (int)n, a.data(), w.data(), 0};
#ifdef _OPENMP
  mla::with_blas_threads(omp_get_max_threads(), run_dsyevd, &call);
#else
  mla::with_blas_threads(1, run_dsyevd, &call);
#endif
  if (call.info != 0) {
    *st = MLA_FAIL(MLA_ERR_INTERNAL, "symmetric_eigen: LAPACK dsyevd info " + std::to_string(call.info) + " (set MHA2MLA_BLAS=own to use the built-in solver)");
    return true;
  }
  // Column j of the column-major result (contiguous) is the eigenvector of w[j], ascending.
  for (int64_t i = 0; i < n; i++) {
    values[i] = w[n - 1 - i];
    std::copy(&a[(size_t)(n - 1 - i) * n], &a[(size_t)(n - i) * n], vectors + (size_t)i * n);
  }
  *st = MLA_OK;
  return true;
}

// In: S [n,n] symmetric (row-major). Out: values [n] descending, vectors [n,n] with eigenvector e in row e.
extern "C" mla_status mla_cpu_symmetric_eigen(const double* S, double* values, double* vectors, int64_t n) {
  MLA_CHECK(n >= 0, "symmetric_eigen: negative size");
  MLA_CHECK_BUF(S && values && vectors, n, "symmetric_eigen: null pointer");
  if (n == 0) return MLA_OK;
  mla_status lapack_status;
  if (eigen_lapack(S, values, vectors, n, &lapack_status)) return lapack_status;
  std::vector<double> Vm((size_t)n * n), d(n), e(n);
  // Column-major: the inner loops of tred2 run down columns (V(k, j) over k), which are then
  // contiguous; and eigenvector c ends up as the contiguous storage row c.
  auto V = [&](int64_t r, int64_t c) -> double& { return Vm[(size_t)c * n + r]; };
  std::copy(S, S + (size_t)n * n, Vm.begin());
  // tred2: Householder reduction to tridiagonal form.
  for (int64_t j = 0; j < n; j++) d[j] = V(n - 1, j);
  for (int64_t i = n - 1; i > 0; i--) {
    double scale = 0, h = 0;
    for (int64_t k = 0; k < i; k++) scale += std::fabs(d[k]);
    if (scale == 0) {
      e[i] = d[i - 1];
      for (int64_t j = 0; j < i; j++) {
        d[j] = V(i - 1, j);
        V(i, j) = 0;
        V(j, i) = 0;
      }
    } else {
      for (int64_t k = 0; k < i; k++) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      double f = d[i - 1];
      double g = std::sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (int64_t j = 0; j < i; j++) e[j] = 0;
      for (int64_t j = 0; j < i; j++) {
        f = d[j];
        V(j, i) = f;
        g = e[j] + V(j, j) * f;
        for (int64_t k = j + 1; k <= i - 1; k++) {
          g += V(k, j) * d[k];
          e[k] += V(k, j) * f;
        }
        e[j] = g;
      }
      f = 0;
      for (int64_t j = 0; j < i; j++) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const double hh = f / (h + h);
      for (int64_t j = 0; j < i; j++) e[j] -= hh * d[j];
      for (int64_t j = 0; j < i; j++) {
        f = d[j];
        g = e[j];
        for (int64_t k = j; k <= i - 1; k++) V(k, j) -= (f * e[k] + g * d[k]);
        d[j] = V(i - 1, j);
        V(i, j) = 0;
      }
    }
    d[i] = h;
  }
  for (int64_t i = 0; i < n - 1; i++) {
    V(n - 1, i) = V(i, i);
    V(i, i) = 1;
    const double h = d[i + 1];
    if (h != 0) {
      for (int64_t k = 0; k <= i; k++) d[k] = V(k, i + 1) / h;
#pragma omp parallel for schedule(static) if (i > 256)
      for (int64_t j = 0; j <= i; j++) {
        double g = 0;
        for (int64_t k = 0; k <= i; k++) g += V(k, i + 1) * V(k, j);
        for (int64_t k = 0; k <= i; k++) V(k, j) -= g * d[k];
      }
    }
    for (int64_t k = 0; k <= i; k++) V(k, i + 1) = 0;
  }
  for (int64_t j = 0; j < n; j++) {
    d[j] = V(n - 1, j);
    V(n - 1, j) = 0;
  }
  V(n - 1, n - 1) = 1;
  e[0] = 0;
  std::vector<double>& W = Vm;  // row c = eigenvector c, so each rotation below touches two contiguous rows
  // tql2: implicit QL on the tridiagonal matrix.
  for (int64_t i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  double f = 0, tst1 = 0;
  const double eps = std::ldexp(1.0, -52);
  for (int64_t l = 0; l < n; l++) {
    tst1 = std::max(tst1, std::fabs(d[l]) + std::fabs(e[l]));
    int64_t m = l;
    while (m < n && std::fabs(e[m]) > eps * tst1) m++;
    if (m == n) m = n - 1;
    if (m > l) {
      int iter = 0;
      do {
        if (++iter > 300) return MLA_FAIL(MLA_ERR_INTERNAL, "symmetric_eigen: QL iteration did not converge");
        double g = d[l];
        double p = (d[l + 1] - g) / (2 * e[l]);
        double r = std::hypot(p, 1.0);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const double dl1 = d[l + 1];
        double h = g - d[l];
        for (int64_t i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        double c = 1, c2 = 1, c3 = 1, s = 0, s2 = 0;
        const double el1 = e[l + 1];
        for (int64_t i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = std::hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          double* wi = &W[(size_t)i * n];
          double* wi1 = &W[(size_t)(i + 1) * n];
          for (int64_t k = 0; k < n; k++) {
            const double t = wi1[k];
            wi1[k] = s * wi[k] + c * t;
            wi[k] = c * wi[k] - s * t;
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (std::fabs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d[a] > d[b]; });
  for (int64_t i = 0; i < n; i++) {
    values[i] = d[order[i]];
    std::copy(&W[(size_t)order[i] * n], &W[(size_t)order[i] * n] + n, vectors + (size_t)i * n);
  }
  return MLA_OK;
}

// Z[a,c] = X[a,b]·Y[b,c], float64 (i-k-j order: the inner loop runs along contiguous rows of Y and Z).
extern "C" mla_status mla_cpu_matmul_f64(const double* X, const double* Y, double* Z, int64_t a, int64_t b, int64_t c) {
  MLA_CHECK(a >= 0 && b >= 0 && c >= 0, "matmul_f64: negative size");
  MLA_CHECK_BUF(X, a * b, "matmul_f64: null X");
  MLA_CHECK_BUF(Y, b * c, "matmul_f64: null Y");
  MLA_CHECK_BUF(Z, a * c, "matmul_f64: null Z");
  if (a * c == 0) return MLA_OK;
  if (auto dgemm = mla::openblas_dgemm(); dgemm && fits_int(a, b, c)) {
    DgemmCall call{dgemm, mla::CblasNoTrans, mla::CblasNoTrans, (int)a, (int)c, (int)b, X, Y, (int)b, (int)c, Z, (int)c};
    mla::with_blas_threads(omp_threads(), run_dgemm, &call);
    return MLA_OK;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < a; i++) {
    double* z = Z + (size_t)i * c;
    std::fill(z, z + c, 0.0);
    for (int64_t t = 0; t < b; t++) {
      const double x = X[(size_t)i * b + t];
      if (x == 0) continue;
      const double* y = Y + (size_t)t * c;
      for (int64_t j = 0; j < c; j++) z[j] += x * y[j];
    }
  }
  return MLA_OK;
}
