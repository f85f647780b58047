// Attention for a few query rows over a long cache (decode), where heads share their key and value
// rows: a KV group's query heads in MHA/GQA, every head in MLA (the latent row; each head group adds
// its rope keys). The heads sharing a row are scored together key by key, so a row is read once for
// all of them, and once more (from cache) for their weighted sums; nothing is copied or transposed.
// mla_cpu_attention's prefill kernel transposes the whole key cache first (it pays off over many
// query rows), and MLA went through it as one-KV-head attention over [kr | c] rows built per call: at
// mha26m's conversion (6 heads, a 480-wide row) MLA decoded at half MHA's rate. Keys go in chunks
// with an online softmax; a task with too few rows for the threads splits its keys over them
// (flash-decoding) and merges the parts.
#include <string>
#include "decode_attention.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include "common.h"
#include "softmax.h"

namespace {
constexpr int64_t CHUNK = 64;      // keys scored before their weighted sum (their rows stay in L2)
constexpr int64_t MIN_PART = 256;  // the fewest keys a thread's part of a split takes

// One task's running softmax over a run of keys: per head its max m, sum l and weighted sum acc [Dv].
struct Partial {
  std::vector<float> m, l, acc;
  Partial(int64_t n, int64_t Dv) : m(n, -INFINITY), l(n, 0.0f), acc(n * Dv, 0.0f) {}
};

// A chunk's rows as float: key row j at k1 + j·ld1 (and k2 + j·ld2), value row j at v + j·ldv.
struct ChunkRows {
  const float* k1;
  int64_t ld1;
  const float* k2;
  int64_t ld2;
  const float* v;
  int64_t ldv;
};

// A task's buffers for a chunk of widened bf16 rows (empty for float rows, read in place).
struct Widened {
  std::vector<float> k1, k2, v;
};

inline float bf16_to_float(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;  // exact: bf16 is float32's upper half
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}


// Float rows: the chunk of keys [a, a + m) read where they are.
ChunkRows chunk_rows(const mla::SharedRows& g, int64_t a, int64_t, Widened&) {
  return {g.k1 + a * g.ld1, g.ld1, g.d2 ? g.k2 + a * g.ld2 : nullptr, g.ld2, g.v + a * g.ldv, g.ldv};
}

// bf16 rows: the chunk widened into w first (it stays in L2 for both passes over it), so the
// arithmetic below runs on float rows exactly as for a float cache. MLA's value row is its key row
// (the latent), widened once.
ChunkRows chunk_rows(const mla::SharedRowsBf16& g, int64_t a, int64_t m, Widened& w) {
  const bool same = g.v == g.k1 && g.ldv == g.ld1 && g.dv == g.d1;
  w.k1.resize(CHUNK * g.d1);
  mla::widen(g.k1 + a * g.ld1, g.ld1, m, g.d1, w.k1.data());
  if (g.d2) {
    w.k2.resize(CHUNK * g.ld2);
    mla::widen(g.k2 + a * g.ld2, g.ld2, m, g.ld2, w.k2.data());
  }
  if (!same) {
    w.v.resize(CHUNK * g.dv);
    mla::widen(g.v + a * g.ldv, g.ldv, m, g.dv, w.v.data());
  }
  return {w.k1.data(), g.d1, g.d2 ? w.k2.data() : nullptr, g.ld2, same ? w.k1.data() : w.v.data(), same ? g.d1 : g.dv};
}

// The heads h0 … h0 + n − 1 of query row t over keys [s0, s1) of `g`, folded into `r`; `p` holds CHUNK·n scores.
template <typename E>
void attend(const mla::SharedRowsOf<E>& g, int64_t t, int64_t h0, int64_t n, int64_t s0, int64_t s1, Partial& r, float* __restrict p, Widened& wide) {
  const int64_t D1 = g.d1, D2 = g.d2, Dv = g.dv;
  for (int64_t a = s0; a < s1; a += CHUNK) {
    const int64_t m = std::min(CHUNK, s1 - a);
    const ChunkRows c = chunk_rows(g, a, m, wide);
    for (int64_t j = 0; j < m; j++) {
      const float* k1 = c.k1 + j * c.ld1;
      const float* k2 = D2 ? c.k2 + j * c.ld2 : nullptr;
      for (int64_t i = 0; i < n; i++) {
        const int64_t h = h0 + i;
        const float* q = g.q1 + (t * g.H + h) * D1;
        float x = 0.0f;
#pragma omp simd reduction(+ : x)
        for (int64_t e = 0; e < D1; e++) x += q[e] * k1[e];
        if (D2) {
          const float* q2 = g.q2 + (t * g.H + h) * D2;
          const float* kh = k2 + (h / g.group2) * D2;
          for (int64_t e = 0; e < D2; e++) x += q2[e] * kh[e];
        }
        p[i * CHUNK + j] = x * g.scale;
      }
    }
    for (int64_t i = 0; i < n; i++) {
      float* pi = p + i * CHUNK;
      float mt = -INFINITY;
      for (int64_t j = 0; j < m; j++) mt = pi[j] > mt ? pi[j] : mt;
      const float mNew = std::max(r.m[i], mt);
      const float alpha = exp_nonpos(r.m[i] - mNew);  // ~0 for the first chunk (m = −∞)
      r.l[i] = r.l[i] * alpha + exp_row(pi, 0, m - 1, mNew);
      r.m[i] = mNew;
      if (alpha != 1.0f) {
        float* acc = r.acc.data() + i * Dv;
        for (int64_t e = 0; e < Dv; e++) acc[e] *= alpha;
      }
    }
    for (int64_t j = 0; j < m; j++) {
      const float* vr = c.v + j * c.ldv;
      for (int64_t i = 0; i < n; i++) {
        const float w = p[i * CHUNK + j];
        float* __restrict acc = r.acc.data() + i * Dv;
#pragma omp simd
        for (int64_t e = 0; e < Dv; e++) acc[e] += w * vr[e];
      }
    }
  }
}

// o (n heads × Dv) = the parts' weighted sums, rescaled to their common max, over their summed l (0 for no key).
void merge(const std::vector<Partial>& parts, int64_t n, int64_t Dv, float* o) {
  for (int64_t i = 0; i < n; i++) {
    float m = -INFINITY;
    for (const Partial& r : parts) m = std::max(m, r.m[i]);
    float l = 0.0f;
    std::vector<float> w(parts.size(), 0.0f);
    for (size_t k = 0; k < parts.size(); k++)
      if (parts[k].l[i] > 0.0f) l += parts[k].l[i] * (w[k] = exp_nonpos(parts[k].m[i] - m));
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t e = 0; e < Dv; e++) {
      float x = 0.0f;
      for (size_t k = 0; k < parts.size(); k++) x += w[k] * parts[k].acc[i * Dv + e];
      o[i * Dv + e] = x * inv;
    }
  }
}

template <typename E>
void decode_rows(const mla::SharedRowsOf<E>& g, int64_t T, int64_t S, int64_t runs, float* o, int64_t off, int64_t window) {
  const int64_t n = g.H / runs;  // heads per shared row
  const bool team = T * g.H * S * (g.d1 + g.d2 + g.dv) >= mla::parallel_macs();
  const int threads = team ? mla_num_threads() : 1;
  const int64_t tasks = T * runs;
  auto rows_of = [&](int64_t grp) {
    mla::SharedRowsOf<E> r = g;
    r.k1 += grp * g.k1_run;
    r.v += grp * g.v_run;
    return r;
  };
  // Enough (query row, run) tasks for every thread: each takes its keys in order.
  if (tasks >= threads) {
#pragma omp parallel for schedule(dynamic) if (team)
    for (int64_t task = 0; task < tasks; task++) {
      const int64_t t = task / runs, grp = task % runs;
      int64_t lo, hi;
      visible(t, S, off, window, &lo, &hi);
      Partial r(n, g.dv);
      std::vector<float> p(CHUNK * n);
      Widened w;
      attend(rows_of(grp), t, grp * n, n, lo, hi + 1, r, p.data(), w);
      merge(std::vector<Partial>{std::move(r)}, n, g.dv, o + (t * g.H + grp * n) * g.dv);
    }
    return;
  }
  // Fewer: each task's keys split into parts of at least MIN_PART, one per thread, merged after.
  for (int64_t task = 0; task < tasks; task++) {
    const int64_t t = task / runs, grp = task % runs;
    int64_t lo, hi;
    visible(t, S, off, window, &lo, &hi);
    const int64_t len = hi + 1 - lo;
    const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(threads, len / MIN_PART));
    std::vector<Partial> parts(nparts, Partial(n, g.dv));
    const mla::SharedRowsOf<E> rows = rows_of(grp);
#pragma omp parallel for schedule(static) if (nparts > 1)
    for (int64_t k = 0; k < nparts; k++) {
      std::vector<float> p(CHUNK * n);
      Widened w;
      attend(rows, t, grp * n, n, lo + len * k / nparts, lo + len * (k + 1) / nparts, parts[k], p.data(), w);
    }
    merge(parts, n, g.dv, o + (t * g.H + grp * n) * g.dv);
  }
}
}  // namespace

namespace mla {
void decode_attention(const SharedRows& g, int64_t T, int64_t S, int64_t runs, float* o, int64_t off, int64_t window) {
  decode_rows(g, T, S, runs, o, off, window);
}

void decode_attention(const SharedRowsBf16& g, int64_t T, int64_t S, int64_t runs, float* o, int64_t off, int64_t window) {
  decode_rows(g, T, S, runs, o, off, window);
}

void widen(const uint16_t* src, int64_t ld, int64_t m, int64_t n, float* __restrict dst) {
  for (int64_t j = 0; j < m; j++) {
    const uint16_t* s = src + j * ld;
    float* d = dst + j * n;
#pragma omp simd
    for (int64_t e = 0; e < n; e++) d[e] = bf16_to_float(s[e]);
  }
}
}  // namespace mla

namespace {
// The latent decode over float or bf16 rows (E): its checks, messages named `what`, and its rows: every
// head shares the latent row; its rope keys are its head group's slice of the kr row.
template <typename E>
mla_status latent_attention(const std::string& what, const float* qr, const E* kr, const float* qc, const E* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window) {
  MLA_CHECK(T >= 0 && S >= 0 && H > 0 && Hkv > 0 && Dr >= 0 && L >= 0, what + ": bad sizes");
  MLA_CHECK(H % Hkv == 0, what + ": H is not a multiple of Hkv");
  MLA_CHECK_BUF(qr, T * H * Dr, what + ": null qr");
  MLA_CHECK_BUF(kr, S * Hkv * Dr, what + ": null kr");
  MLA_CHECK_BUF(qc, T * H * L, what + ": null qc");
  MLA_CHECK_BUF(c, S * L, what + ": null c");
  MLA_CHECK_BUF(o, T * H * L, what + ": null output");
  if (T * H * L == 0) return MLA_OK;
  const mla::SharedRowsOf<E> g{qc, L, c, L, 0, qr, Dr, kr, Hkv * Dr, H / Hkv, c, L, 0, L, H, scale};
  mla::decode_attention(g, T, S, 1, o, query_offset, window);
  return MLA_OK;
}
}  // namespace

extern "C" mla_status mla_cpu_latent_attention(const float* qr, const float* kr, const float* qc, const float* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window) {
  return latent_attention<float>("latent attention", qr, kr, qc, c, o, T, S, H, Hkv, Dr, L, scale, query_offset, window);
}

// Over a bf16 cache held as bf16 (the native CPU backend's bf16 row store): the same results as the float
// entry on the widened rows, bit for bit.
extern "C" mla_status mla_cpu_latent_attention_bf16(const float* qr, const uint16_t* kr, const float* qc, const uint16_t* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window) {
  return latent_attention<uint16_t>("latent attention (bf16 cache)", qr, kr, qc, c, o, T, S, H, Hkv, Dr, L, scale, query_offset, window);
}
