// Causal GQA attention and its backward on the CPU, one (query row, head) per task; the backward
// gives each thread whole KV groups so that dk/dv rows are written by one thread only.
#include <cmath>
#include <cstring>
#include <vector>
#include "common.h"

static inline void visible(int64_t t, int64_t S, int64_t off, int64_t window, int64_t* lo, int64_t* hi) {
  const int64_t q = t + off;
  *hi = q < S - 1 ? q : S - 1;
  *lo = window > 0 ? (q - window + 1 > 0 ? q - window + 1 : 0) : 0;
}

// p[s] = scale·q·k_s for the visible keys s in [lo, hi]; returns their maximum.
static inline float score_row(const float* qr, const float* k, int64_t lo, int64_t hi, int64_t Hkv, int64_t kh, int64_t Dh, float scale, float* p) {
  float mx = -INFINITY;
  for (int64_t s = lo; s <= hi; s++) {
    const float* kr = k + (s * Hkv + kh) * Dh;
    float d = 0;
    for (int64_t i = 0; i < Dh; i++) d += qr[i] * kr[i];
    p[s] = d * scale;
    if (p[s] > mx) mx = p[s];
  }
  return mx;
}

static mla_status check(const void* q, const void* k, const void* v, int64_t T, int64_t S, int64_t H, int64_t Hkv) {
  MLA_CHECK(q && k && v, "attention: null pointer");
  MLA_CHECK(T >= 0 && S >= 0 && H > 0 && Hkv > 0, "attention: bad sizes");
  MLA_CHECK(H % Hkv == 0, "attention: H is not a multiple of Hkv");
  return MLA_OK;
}

extern "C" mla_status mla_cpu_attention(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  if (mla_status s = check(q, k, v, T, S, H, Hkv)) return s;
  MLA_CHECK(o, "attention: null output");
  const int64_t group = H / Hkv;
#pragma omp parallel
  {
    std::vector<float> p(S > 0 ? S : 1);
    std::vector<float> acc(Dv);
#pragma omp for schedule(static) collapse(2)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++) {
        int64_t lo, hi;
        visible(t, S, off, window, &lo, &hi);
        const int64_t kh = h / group;
        const float* qr = q + (t * H + h) * Dh;
        const float mx = score_row(qr, k, lo, hi, Hkv, kh, Dh, scale, p.data());
        float z = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t s = lo; s <= hi; s++) {
          const float e = std::exp(p[s] - mx);
          z += e;
          const float* vr = v + (s * Hkv + kh) * Dv;
          for (int64_t i = 0; i < Dv; i++) acc[i] += e * vr[i];
        }
        float* out = o + (t * H + h) * Dv;
        const float inv = z > 0 ? 1.0f / z : 0.0f;
        for (int64_t i = 0; i < Dv; i++) out[i] = acc[i] * inv;
      }
  }
  return MLA_OK;
}

extern "C" mla_status mla_cpu_attention_backward(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk, float* dv, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  if (mla_status s = check(q, k, v, T, S, H, Hkv)) return s;
  MLA_CHECK(dout && dq && dk && dv, "attention_backward: null pointer");
  const int64_t group = H / Hkv;
  std::memset(dq, 0, sizeof(float) * T * H * Dh);
  std::memset(dk, 0, sizeof(float) * S * Hkv * Dh);
  std::memset(dv, 0, sizeof(float) * S * Hkv * Dv);
#pragma omp parallel
  {
    std::vector<float> p(S > 0 ? S : 1), dp(S > 0 ? S : 1);
#pragma omp for schedule(dynamic)
    for (int64_t kh = 0; kh < Hkv; kh++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
          int64_t lo, hi;
          visible(t, S, off, window, &lo, &hi);
          const float* qr = q + (t * H + h) * Dh;
          const float* go = dout + (t * H + h) * Dv;
          const float mx = score_row(qr, k, lo, hi, Hkv, kh, Dh, scale, p.data());
          float z = 0;
          for (int64_t s = lo; s <= hi; s++) z += (p[s] = std::exp(p[s] - mx));
          const float invz = 1.0f / z;
          float sum = 0;
          for (int64_t s = lo; s <= hi; s++) {
            p[s] *= invz;
            const float* vr = v + (s * Hkv + kh) * Dv;
            float* dvr = dv + (s * Hkv + kh) * Dv;
            float d = 0;
            for (int64_t i = 0; i < Dv; i++) {
              d += go[i] * vr[i];
              dvr[i] += p[s] * go[i];
            }
            dp[s] = d;
            sum += p[s] * d;
          }
          float* dqr = dq + (t * H + h) * Dh;
          for (int64_t s = lo; s <= hi; s++) {
            const float ds = p[s] * (dp[s] - sum) * scale;
            const float* kr = k + (s * Hkv + kh) * Dh;
            float* dkr = dk + (s * Hkv + kh) * Dh;
            for (int64_t i = 0; i < Dh; i++) {
              dqr[i] += ds * kr[i];
              dkr[i] += ds * qr[i];
            }
          }
        }
  }
  return MLA_OK;
}
