// What the CPU attention kernels share: the keys a query row sees, and a vectorizable exp for softmax.
#pragma once
#include <cstdint>

// The keys query row t sees: [lo, hi], causal from its position t + off, within `window` (0: all).
static inline void visible(int64_t t, int64_t S, int64_t off, int64_t window, int64_t* lo, int64_t* hi) {
  const int64_t q = t + off;
  *hi = q < S - 1 ? q : S - 1;
  *lo = window > 0 ? (q - window + 1 > 0 ? q - window + 1 : 0) : 0;
}

// exp(x) for x ≤ 0 (scores minus their maximum): 2^k·e^r, r in [−ln2/2, ln2/2], with a degree-6
// polynomial for e^r (Cephes expf; relative error ~2e-7). Written so that a loop over it vectorizes:
// libm's expf does not, and at small head dims it was most of the attention time.
static inline float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float kf = __builtin_floorf(x * 1.44269504089f + 0.5f);
  const float r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = ((int32_t)kf + 127) << 23;
  return e * scale.f;
}

// p[s] ← exp(p[s] − mx) over [lo, hi]; returns their sum.
static inline float exp_row(float* __restrict p, int64_t lo, int64_t hi, float mx) {
  float z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t s = lo; s <= hi; s++) {
    const float e = exp_nonpos(p[s] - mx);
    p[s] = e;
    z += e;
  }
  return z;
}
