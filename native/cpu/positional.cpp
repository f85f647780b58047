// RoPE and token embedding on the CPU (forward and backward). Both are memory-bound; the point of
// doing them natively is to keep a training step free of per-element JavaScript loops.
#include <cmath>
#include <cstring>
#include <vector>
#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

// Rotate-half RoPE; `sign` = -1 rotates by the opposite angle (the backward of a rotation).
extern "C" mla_status mla_cpu_rope(const float* x, float* y, const int32_t* positions, const double* inv_freq, int64_t n_freq, int64_t T, int64_t H, int64_t Dh, int64_t rotary_dims, int32_t sign) {
  MLA_CHECK(T >= 0 && H >= 0 && Dh >= 0, "rope: negative size");
  MLA_CHECK(rotary_dims >= 0 && rotary_dims % 2 == 0 && rotary_dims <= Dh, "rope: rotary_dims must be even and at most Dh");
  const int64_t half = rotary_dims / 2;
  MLA_CHECK(n_freq == half || n_freq == H * half, "rope: n_freq must be rotary_dims/2 or H·rotary_dims/2");
  MLA_CHECK_BUF(x && y, T * H * Dh, "rope: null x or y");
  MLA_CHECK_BUF(positions, T, "rope: null positions");
  MLA_CHECK_BUF(inv_freq, n_freq, "rope: null inv_freq");
  if (T * H * Dh == 0) return MLA_OK;
  const bool per_head = n_freq == H * half && H > 1;
#pragma omp parallel for schedule(static) if (T * H * Dh > 65536)
  for (int64_t t = 0; t < T; t++) {
    std::vector<double> c(n_freq), s(n_freq);
    const float pos = (float)(sign < 0 ? -positions[t] : positions[t]);
    for (int64_t j = 0; j < n_freq; j++) {
      // The angle is rounded to float32 as HF computes it, so long positions stay in step.
      const float a = pos * (float)inv_freq[j];
      c[j] = std::cos((double)a);
      s[j] = std::sin((double)a);
    }
    for (int64_t h = 0; h < H; h++) {
      const float* xi = x + (t * H + h) * Dh;
      float* yo = y + (t * H + h) * Dh;
      const int64_t f = per_head ? h * half : 0;
      for (int64_t i = 0; i < half; i++) {
        const double a = xi[i], b = xi[i + half];
        yo[i] = (float)(a * c[f + i] - b * s[f + i]);
        yo[i + half] = (float)(b * c[f + i] + a * s[f + i]);
      }
      if (rotary_dims < Dh) std::memcpy(yo + rotary_dims, xi + rotary_dims, sizeof(float) * (Dh - rotary_dims));
    }
  }
  return MLA_OK;
}

static mla_status check_ids(const char* op, const int32_t* ids, int64_t T, int64_t V) {
  for (int64_t t = 0; t < T; t++)
    if (ids[t] < 0 || ids[t] >= V) return MLA_FAIL(MLA_ERR_ARGUMENT, std::string(op) + ": token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(V));
  return MLA_OK;
}

extern "C" mla_status mla_cpu_embedding(const float* table, const int32_t* ids, float* y, int64_t T, int64_t V, int64_t D) {
  MLA_CHECK(T >= 0 && V >= 0 && D >= 0, "embedding: negative size");
  MLA_CHECK_BUF(ids, T, "embedding: null ids");
  MLA_CHECK_BUF(table, V * D, "embedding: null table");
  MLA_CHECK_BUF(y, T * D, "embedding: null y");
  if (mla_status st = check_ids("embedding", ids, T, V)) return st;
  if (T * D == 0) return MLA_OK;
#pragma omp parallel for schedule(static) if (T * D > 65536)
  for (int64_t t = 0; t < T; t++) std::memcpy(y + t * D, table + (int64_t)ids[t] * D, sizeof(float) * D);
  return MLA_OK;
}

// dtable[V,D] = 0, then rows of dy added at ids. Threads split the D columns, so repeated ids never race.
extern "C" mla_status mla_cpu_embedding_backward(const int32_t* ids, const float* dy, float* dtable, int64_t T, int64_t V, int64_t D) {
  MLA_CHECK(T >= 0 && V >= 0 && D >= 0, "embedding_backward: negative size");
  MLA_CHECK_BUF(ids, T, "embedding_backward: null ids");
  MLA_CHECK_BUF(dy, T * D, "embedding_backward: null dy");
  MLA_CHECK_BUF(dtable, V * D, "embedding_backward: null dtable");
  if (mla_status st = check_ids("embedding_backward", ids, T, V)) return st;
  if (V * D == 0) return MLA_OK;
  std::memset(dtable, 0, sizeof(float) * V * D);
#pragma omp parallel
  {
#ifdef _OPENMP
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int nt = 1, me = 0;
#endif
    const int64_t lo = D * me / nt, hi = D * (me + 1) / nt;
    for (int64_t t = 0; t < T; t++) {
      float* out = dtable + (int64_t)ids[t] * D;
      const float* g = dy + t * D;
      for (int64_t d = lo; d < hi; d++) out[d] += g[d];
    }
  }
  return MLA_OK;
}
