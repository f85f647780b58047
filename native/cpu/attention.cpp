// Causal GQA attention and its backward on the CPU, one (query row, head) per task (a forward of at
// most DECODE_ROWS query rows goes to decode_attention.cpp); the backward gives each thread whole KV
// groups so that dk/dv rows are written by one thread only.
#include <string>
#include <cmath>
#include <cstring>
#include <vector>
#include "common.h"

#include "decode_attention.h"
#include "softmax.h"


// DC > 0 (template argument below) fixes the head dim at compile time, so the per-key value loops
// unroll and vectorize at small head dims.
// Keys per KV head as [Hkv][Dh][S] (contiguous along the keys), so that a query row's scores are
// Dh vector passes over the visible keys instead of one short dot product per key.
static std::vector<float> keys_by_dim(const float* k, int64_t S, int64_t Hkv, int64_t Dh) {
  std::vector<float> kt((size_t)Hkv * Dh * S);
  for (int64_t s = 0; s < S; s++)
    for (int64_t g = 0; g < Hkv; g++)
      for (int64_t d = 0; d < Dh; d++) kt[((size_t)g * Dh + d) * S + s] = k[(s * Hkv + g) * Dh + d];
  return kt;
}

// p[s] = scale·q·k_s over [lo, hi] from the transposed keys of KV head kh; returns their maximum.
static inline float score_row_t(const float* qr, const float* kt, int64_t lo, int64_t hi, int64_t S, int64_t kh, int64_t Dh, float scale, float* __restrict p) {
  for (int64_t s = lo; s <= hi; s++) p[s] = 0;
  for (int64_t d = 0; d < Dh; d++) {
    const float qd = qr[d] * scale;
    const float* __restrict row = kt + ((size_t)kh * Dh + d) * S;
    for (int64_t s = lo; s <= hi; s++) p[s] += qd * row[s];
  }
  float mx = -INFINITY;
  for (int64_t s = lo; s <= hi; s++) mx = p[s] > mx ? p[s] : mx;
  return mx;
}

namespace mla {
mla_status check_attention(const char* what, const void* q, const void* k, const void* v, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv) {
  const std::string w = what;
  MLA_CHECK(T >= 0 && S >= 0 && H > 0 && Hkv > 0 && Dh >= 0 && Dv >= 0, w + ": bad sizes");
  MLA_CHECK(H % Hkv == 0, w + ": H is not a multiple of Hkv");
  MLA_CHECK_BUF(q, T * H * Dh, w + ": null q");
  MLA_CHECK_BUF(k, S * Hkv * Dh, w + ": null k");
  MLA_CHECK_BUF(v, S * Hkv * Dv, w + ": null v");
  return MLA_OK;
}
}  // namespace mla

static mla_status check(const void* q, const void* k, const void* v, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv) {
  return mla::check_attention("attention", q, k, v, T, S, H, Hkv, Dh, Dv);
}

template <int DC>
static void attention_fwd(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh_, int64_t Dv_, float scale, int64_t off, int64_t window) {
  const int64_t Dh = DC ? DC : Dh_, Dv = DC ? DC : Dv_;
  const int64_t group = H / Hkv;
  const std::vector<float> kt = keys_by_dim(k, S, Hkv, Dh);
  // A few rows over a short cache run on the calling thread (see parallel_macs); decode rows (T ≤
  // mla::DECODE_ROWS) take decode_attention instead.
#pragma omp parallel if (T * H * S * (Dh + Dv) >= mla::parallel_macs())
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
        const float mx = score_row_t(qr, kt.data(), lo, hi, S, kh, Dh, scale, p.data());
        const float z = hi >= lo ? exp_row(p.data(), lo, hi, mx) : 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t s = lo; s <= hi; s++) {
          const float e = p[s];
          const float* vr = v + (s * Hkv + kh) * Dv;
          for (int64_t i = 0; i < Dv; i++) acc[i] += e * vr[i];
        }
        float* out = o + (t * H + h) * Dv;
        const float inv = z > 0 ? 1.0f / z : 0.0f;
        for (int64_t i = 0; i < Dv; i++) out[i] = acc[i] * inv;
      }
  }
}

// Head dims 8…128 with Dh = Dv get a compile-time specialization; others the generic loop.
#define MLA_DISPATCH_HEAD_DIM(fn, ...)                         \
  do {                                                          \
    if (Dh == Dv && Dh == 8) fn<8>(__VA_ARGS__);                \
    else if (Dh == Dv && Dh == 16) fn<16>(__VA_ARGS__);         \
    else if (Dh == Dv && Dh == 32) fn<32>(__VA_ARGS__);         \
    else if (Dh == Dv && Dh == 64) fn<64>(__VA_ARGS__);         \
    else if (Dh == Dv && Dh == 128) fn<128>(__VA_ARGS__);       \
    else fn<0>(__VA_ARGS__);                                    \
  } while (0)

extern "C" mla_status mla_cpu_attention(const float* q, const float* k, const float* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  if (mla_status s = check(q, k, v, T, S, H, Hkv, Dh, Dv)) return s;
  MLA_CHECK_BUF(o, T * H * Dv, "attention: null output");
  if (T * Dv == 0) return MLA_OK;
  // A few query rows (decode): no transpose of the cache, a KV group's heads read each row once.
  if (T <= mla::DECODE_ROWS) {
    const mla::SharedRows rows{q, Dh, k, Hkv * Dh, Dh, nullptr, 0, nullptr, 0, 1, v, Hkv * Dv, Dv, Dv, H, scale};
    mla::decode_attention(rows, T, S, Hkv, o, off, window);
    return MLA_OK;
  }
  MLA_DISPATCH_HEAD_DIM(attention_fwd, q, k, v, o, T, S, H, Hkv, Dh, Dv, scale, off, window);
  return MLA_OK;
}

template <int DC>
static void attention_bwd(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk, float* dv, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh_, int64_t Dv_, float scale, int64_t off, int64_t window) {
  const int64_t Dh = DC ? DC : Dh_, Dv = DC ? DC : Dv_;
  const int64_t group = H / Hkv;
  const std::vector<float> kt = keys_by_dim(k, S, Hkv, Dh);
#pragma omp parallel
  {
    std::vector<float> p(S > 0 ? S : 1), dp(S > 0 ? S : 1);
    // Each task accumulates its KV head's dk/dv (and its heads' dq) in private contiguous rows and
    // writes them out once: with small heads, rows of different KV heads share cache lines, and
    // accumulating in place made two threads slower than one.
    std::vector<float> dkl(S * Dh), dvl(S * Dv), dql(group * Dh);
#pragma omp for schedule(dynamic)
    for (int64_t kh = 0; kh < Hkv; kh++) {
      std::fill(dkl.begin(), dkl.end(), 0.0f);
      std::fill(dvl.begin(), dvl.end(), 0.0f);
      for (int64_t t = 0; t < T; t++) {
        for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
          int64_t lo, hi;
          visible(t, S, off, window, &lo, &hi);
          const float* qr = q + (t * H + h) * Dh;
          const float* go = dout + (t * H + h) * Dv;
          float* dqr = dql.data() + (h - kh * group) * Dh;
          for (int64_t i = 0; i < Dh; i++) dqr[i] = 0;
          if (hi < lo) continue;
          const float mx = score_row_t(qr, kt.data(), lo, hi, S, kh, Dh, scale, p.data());
          const float z = exp_row(p.data(), lo, hi, mx);
          const float invz = 1.0f / z;
          float sum = 0;
          for (int64_t s = lo; s <= hi; s++) {
            p[s] *= invz;
            const float* vr = v + (s * Hkv + kh) * Dv;
            float* dvr = dvl.data() + s * Dv;
            float d = 0;
            for (int64_t i = 0; i < Dv; i++) {
              d += go[i] * vr[i];
              dvr[i] += p[s] * go[i];
            }
            dp[s] = d;
            sum += p[s] * d;
          }
          for (int64_t s = lo; s <= hi; s++) {
            const float ds = p[s] * (dp[s] - sum) * scale;
            const float* kr = k + (s * Hkv + kh) * Dh;
            float* dkr = dkl.data() + s * Dh;
            for (int64_t i = 0; i < Dh; i++) {
              dqr[i] += ds * kr[i];
              dkr[i] += ds * qr[i];
            }
          }
        }
        if (Dh) std::memcpy(dq + (t * H + kh * group) * Dh, dql.data(), sizeof(float) * group * Dh);
      }
      // Dh or Dv may be 0 (a zero-width key part), and then dq/dk or dv is NULL.
      for (int64_t s = 0; s < S; s++) {
        if (Dh) std::memcpy(dk + (s * Hkv + kh) * Dh, dkl.data() + s * Dh, sizeof(float) * Dh);
        if (Dv) std::memcpy(dv + (s * Hkv + kh) * Dv, dvl.data() + s * Dv, sizeof(float) * Dv);
      }
    }
  }
}

extern "C" mla_status mla_cpu_attention_backward(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk, float* dv, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window) {
  if (mla_status s = check(q, k, v, T, S, H, Hkv, Dh, Dv)) return s;
  MLA_CHECK_BUF(dout, T * H * Dv, "attention_backward: null dout");
  MLA_CHECK_BUF(dq, T * H * Dh, "attention_backward: null dq");
  MLA_CHECK_BUF(dk, S * Hkv * Dh, "attention_backward: null dk");
  MLA_CHECK_BUF(dv, S * Hkv * Dv, "attention_backward: null dv");
  if (T == 0 || S == 0 || Dh + Dv == 0) {
    // No query sees a key (or there is nothing to differentiate): all gradients are zero.
    if (dq) std::memset(dq, 0, sizeof(float) * T * H * Dh);
    if (dk) std::memset(dk, 0, sizeof(float) * S * Hkv * Dh);
    if (dv) std::memset(dv, 0, sizeof(float) * S * Hkv * Dv);
    return MLA_OK;
  }
  MLA_DISPATCH_HEAD_DIM(attention_bwd, q, k, v, dout, dq, dk, dv, T, S, H, Hkv, Dh, Dv, scale, off, window);
  return MLA_OK;
}
