// MLA attention on the latent cache for the CPU: score(h, s) = scale·(qr_h·kr_{s,g(h)} + qc_h·c_s),
// output o_h = softmax·c. Every head reads the same latent rows, so a query row's heads are scored
// together key by key: a row of c is read once for all H heads, and once more (from cache) for their
// weighted sums. The one-KV-head route through mla_cpu_attention first copied the cache into
// [kr | c] rows, transposed them, and read them once per head: at mha26m's conversion (6 heads, a
// 480-wide row) MLA decoded at half MHA's rate. Keys go in chunks with an online softmax; a few query
// rows over a long cache split their keys over the threads (flash-decoding) and merge the parts.
#include <algorithm>
#include <cmath>
#include <vector>
#include "common.h"
#include "softmax.h"

namespace {
constexpr int64_t CHUNK = 64;       // keys scored before their weighted sum (their rows stay in L2)
constexpr int64_t MIN_PART = 256;   // the fewest keys a thread's part of a split takes

struct Shape {
  int64_t T, S, H, Hkv, Dr, L, off, window;
  float scale;
};

// One query row's running softmax over a run of keys: per head its max m, sum l and weighted sum acc [L].
struct Partial {
  std::vector<float> m, l, acc;
  Partial(int64_t H, int64_t L) : m(H, -INFINITY), l(H, 0.0f), acc(H * L, 0.0f) {}
};

// Folds keys [s0, s1) of query row t into `r`; `p` holds CHUNK·H scores.
void attend(const Shape& d, const float* qr, const float* kr, const float* qc, const float* c, int64_t t, int64_t s0, int64_t s1, Partial& r, float* __restrict p) {
  const int64_t H = d.H, L = d.L, Dr = d.Dr, group = H / d.Hkv;
  const float* qct = qc + t * H * L;
  const float* qrt = qr + t * H * Dr;
  for (int64_t a = s0; a < s1; a += CHUNK) {
    const int64_t n = std::min(CHUNK, s1 - a);
    for (int64_t j = 0; j < n; j++) {
      const float* cr = c + (a + j) * L;
      const float* krr = kr + (a + j) * d.Hkv * Dr;
      for (int64_t h = 0; h < H; h++) {
        const float* q = qct + h * L;
        float x = 0.0f;
#pragma omp simd reduction(+ : x)
        for (int64_t i = 0; i < L; i++) x += q[i] * cr[i];
        const float* qh = qrt + h * Dr;
        const float* kh = krr + (h / group) * Dr;
        for (int64_t i = 0; i < Dr; i++) x += qh[i] * kh[i];
        p[h * CHUNK + j] = x * d.scale;
      }
    }
    for (int64_t h = 0; h < H; h++) {
      float* ph = p + h * CHUNK;
      float mt = -INFINITY;
      for (int64_t j = 0; j < n; j++) mt = ph[j] > mt ? ph[j] : mt;
      const float mNew = std::max(r.m[h], mt);
      const float alpha = exp_nonpos(r.m[h] - mNew);  // 0 for the first chunk (m = −∞)
      r.l[h] = r.l[h] * alpha + exp_row(ph, 0, n - 1, mNew);
      r.m[h] = mNew;
      if (alpha != 1.0f) {
        float* acc = r.acc.data() + h * L;
        for (int64_t i = 0; i < L; i++) acc[i] *= alpha;
      }
    }
    for (int64_t j = 0; j < n; j++) {
      const float* cr = c + (a + j) * L;
      for (int64_t h = 0; h < H; h++) {
        const float w = p[h * CHUNK + j];
        float* __restrict acc = r.acc.data() + h * L;
#pragma omp simd
        for (int64_t i = 0; i < L; i++) acc[i] += w * cr[i];
      }
    }
  }
}

// o_t = the parts' weighted sums, each rescaled to the common max, over their summed l (0 for no key).
void merge(const Shape& d, const std::vector<Partial>& parts, float* o) {
  const int64_t H = d.H, L = d.L;
  for (int64_t h = 0; h < H; h++) {
    float m = -INFINITY;
    for (const Partial& r : parts) m = std::max(m, r.m[h]);
    float l = 0.0f;
    std::vector<float> w(parts.size(), 0.0f);
    for (size_t k = 0; k < parts.size(); k++)
      if (parts[k].l[h] > 0.0f) l += parts[k].l[h] * (w[k] = exp_nonpos(parts[k].m[h] - m));
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* out = o + h * L;
    for (int64_t i = 0; i < L; i++) {
      float x = 0.0f;
      for (size_t k = 0; k < parts.size(); k++) x += w[k] * parts[k].acc[h * L + i];
      out[i] = x * inv;
    }
  }
}
}  // namespace

extern "C" mla_status mla_cpu_latent_attention(const float* qr, const float* kr, const float* qc, const float* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window) {
  MLA_CHECK(T >= 0 && S >= 0 && H > 0 && Hkv > 0 && Dr >= 0 && L >= 0, "latent attention: bad sizes");
  MLA_CHECK(H % Hkv == 0, "latent attention: H is not a multiple of Hkv");
  MLA_CHECK_BUF(qr, T * H * Dr, "latent attention: null qr");
  MLA_CHECK_BUF(kr, S * Hkv * Dr, "latent attention: null kr");
  MLA_CHECK_BUF(qc, T * H * L, "latent attention: null qc");
  MLA_CHECK_BUF(c, S * L, "latent attention: null c");
  MLA_CHECK_BUF(o, T * H * L, "latent attention: null output");
  if (T * H * L == 0) return MLA_OK;
  const Shape d{T, S, H, Hkv, Dr, L, query_offset, window, scale};
  const bool team = T * H * S * (L + Dr) >= mla::parallel_macs();
  // Enough query rows for every thread: one row per task, its keys in order. Fewer (decode): each
  // row's keys split into parts of at least MIN_PART, one per thread, merged after.
  const int threads = team ? mla_num_threads() : 1;
  if (T >= threads) {
#pragma omp parallel for schedule(dynamic) if (team)
    for (int64_t t = 0; t < T; t++) {
      int64_t lo, hi;
      visible(t, S, query_offset, window, &lo, &hi);
      Partial r(H, L);
      std::vector<float> p(CHUNK * H);
      attend(d, qr, kr, qc, c, t, lo, hi + 1, r, p.data());
      merge(d, std::vector<Partial>{std::move(r)}, o + t * H * L);
    }
    return MLA_OK;
  }
  for (int64_t t = 0; t < T; t++) {
    int64_t lo, hi;
    visible(t, S, query_offset, window, &lo, &hi);
    const int64_t n = hi + 1 - lo;
    const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(threads, n / MIN_PART));
    std::vector<Partial> parts(nparts, Partial(H, L));
#pragma omp parallel for schedule(static) if (nparts > 1)
    for (int64_t k = 0; k < nparts; k++) {
      std::vector<float> p(CHUNK * H);
      attend(d, qr, kr, qc, c, t, lo + n * k / nparts, lo + n * (k + 1) / nparts, parts[k], p.data());
    }
    merge(d, parts, o + t * H * L);
  }
  return MLA_OK;
}
