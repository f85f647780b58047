// Optimizer and calibration reductions on the CPU: elementwise passes over every parameter (AdamW)
// or every activation (pair norms, covariance) that were JavaScript loops.
#include <cmath>
#include "common.h"

extern "C" mla_status mla_cpu_adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, double bias_c1, double bias_c2, float grad_scale) {
  MLA_CHECK(n >= 0, "adamw: negative size");
  MLA_CHECK_BUF(p && g && m && v, n, "adamw: null pointer");
  MLA_CHECK(bias_c1 > 0 && bias_c2 > 0, "adamw: bias corrections must be positive (step ≥ 1)");
  const float ic1 = (float)(1.0 / bias_c1), ic2 = (float)(1.0 / bias_c2);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) {
    const float gi = g[i] * grad_scale;  // the gradient stays as it was (an input)
    const float mi = beta1 * m[i] + (1 - beta1) * gi;
    const float vi = beta2 * v[i] + (1 - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - lr * ((mi * ic1) / (std::sqrt(vi * ic2) + eps) + weight_decay * p[i]);
  }
  return MLA_OK;
}

extern "C" mla_status mla_cpu_sum_squares(const float* x, int64_t n, double* out) {
  MLA_CHECK(out && n >= 0, "sum_squares: bad arguments");
  MLA_CHECK_BUF(x, n, "sum_squares: null x");
  double s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > 65536)
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  *out = s;
  return MLA_OK;
}

extern "C" mla_status mla_cpu_scale_inplace(float* x, int64_t n, float s) {
  MLA_CHECK(n >= 0, "scale_inplace: negative size");
  MLA_CHECK_BUF(x, n, "scale_inplace: null x");
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) x[i] *= s;
  return MLA_OK;
}

// acc[h, i] += mean over t of ‖(y[t,h,i], y[t,h,i+Dh/2])‖ for y[T, heads, Dh] (2-norm calibration).
extern "C" mla_status mla_cpu_pair_norms(const float* y, double* acc, int64_t T, int64_t heads, int64_t Dh) {
  MLA_CHECK(T >= 0 && heads >= 0 && Dh >= 0 && Dh % 2 == 0, "pair_norms: bad sizes");
  MLA_CHECK_BUF(y, T * heads * Dh, "pair_norms: null y");
  MLA_CHECK_BUF(acc, heads * Dh / 2, "pair_norms: null acc");
  if (T == 0) return MLA_OK;  // no rows: nothing to average
  const int64_t half = Dh / 2;
#pragma omp parallel for schedule(static)
  for (int64_t hi = 0; hi < heads * half; hi++) {
    const int64_t h = hi / half, i = hi % half;
    double s = 0;
    for (int64_t t = 0; t < T; t++) {
      const float* r = y + (t * heads + h) * Dh;
      s += std::hypot((double)r[i], (double)r[i + half]);
    }
    acc[hi] += s / T;
  }
  return MLA_OK;
}

// acc[D,D] (upper triangle, row-major) += xᵀ·x for x[T,D], float64 accumulation (activation-aware SVD init).
extern "C" mla_status mla_cpu_accumulate_covariance(const float* x, double* acc, int64_t T, int64_t D) {
  MLA_CHECK(T >= 0 && D >= 0, "accumulate_covariance: negative size");
  MLA_CHECK_BUF(x, T * D, "accumulate_covariance: null x");
  MLA_CHECK_BUF(acc, D * D, "accumulate_covariance: null acc");
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < D; i++) {
    double* row = acc + i * D;
    for (int64_t t = 0; t < T; t++) {
      const float* xr = x + t * D;
      const double xi = xr[i];
      if (xi == 0) continue;
      for (int64_t j = i; j < D; j++) row[j] += xi * xr[j];
    }
  }
  return MLA_OK;
}
