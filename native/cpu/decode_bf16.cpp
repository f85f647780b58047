// Decode attention over a bf16 cache held as bf16 on the host (the native CPU backend's bf16 row
// store, src/backends/native/hostRowStore.ts): the rows are read as stored, half the bytes of the
// float32 rows the cache used to hold, and widened exactly (bf16 is float32's upper half) chunk by
// chunk inside decode_attention. Results equal mla_cpu_attention / mla_cpu_latent_attention on the
// widened rows bit for bit: the same kernels, the same order of arithmetic.
#include <cstring>
#include <vector>
#include "common.h"
#include "decode_attention.h"

namespace {
// n bf16 values as float32.
std::vector<float> widened(const uint16_t* x, int64_t n) {
  std::vector<float> out(n);
  for (int64_t i = 0; i < n; i++) {
    const uint32_t u = uint32_t(x[i]) << 16;
    std::memcpy(&out[i], &u, sizeof(float));
  }
  return out;
}
}  // namespace

extern "C" mla_status mla_cpu_attention_bf16_kv(const float* q, const uint16_t* k, const uint16_t* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window) {
  MLA_CHECK(T >= 0 && S >= 0 && H > 0 && Hkv > 0 && Dh >= 0 && Dv >= 0, "attention (bf16 cache): bad sizes");
  MLA_CHECK(H % Hkv == 0, "attention (bf16 cache): H is not a multiple of Hkv");
  MLA_CHECK_BUF(q, T * H * Dh, "attention (bf16 cache): null q");
  MLA_CHECK_BUF(k, S * Hkv * Dh, "attention (bf16 cache): null k");
  MLA_CHECK_BUF(v, S * Hkv * Dv, "attention (bf16 cache): null v");
  MLA_CHECK_BUF(o, T * H * Dv, "attention (bf16 cache): null output");
  if (T * Dv == 0) return MLA_OK;
  if (T <= mla::DECODE_ROWS) {
    const mla::SharedRowsBf16 rows{q, Dh, k, Hkv * Dh, Dh, nullptr, 0, nullptr, 0, 1, v, Hkv * Dv, Dv, Dv, H, scale};
    mla::decode_attention(rows, T, S, Hkv, o, query_offset, window);
    return MLA_OK;
  }
  // Many query rows (a chunk of a prompt): the prefill kernel transposes the keys anyway, so it gets
  // a widened copy and computes exactly what it computes for a float32 cache.
  const std::vector<float> kf = widened(k, S * Hkv * Dh), vf = widened(v, S * Hkv * Dv);
  return mla_cpu_attention(q, kf.data(), vf.data(), o, T, S, H, Hkv, Dh, Dv, scale, query_offset, window);
}

extern "C" mla_status mla_cpu_latent_attention_bf16(const float* qr, const uint16_t* kr, const float* qc, const uint16_t* c, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dr, int64_t L, float scale, int64_t query_offset, int64_t window) {
  MLA_CHECK(T >= 0 && S >= 0 && H > 0 && Hkv > 0 && Dr >= 0 && L >= 0, "latent attention (bf16 cache): bad sizes");
  MLA_CHECK(H % Hkv == 0, "latent attention (bf16 cache): H is not a multiple of Hkv");
  MLA_CHECK_BUF(qr, T * H * Dr, "latent attention (bf16 cache): null qr");
  MLA_CHECK_BUF(kr, S * Hkv * Dr, "latent attention (bf16 cache): null kr");
  MLA_CHECK_BUF(qc, T * H * L, "latent attention (bf16 cache): null qc");
  MLA_CHECK_BUF(c, S * L, "latent attention (bf16 cache): null c");
  MLA_CHECK_BUF(o, T * H * L, "latent attention (bf16 cache): null output");
  if (T * H * L == 0) return MLA_OK;
  // As mla_cpu_latent_attention: every head shares the latent row, its rope keys are its group's slice.
  const mla::SharedRowsBf16 g{qc, L, c, L, 0, qr, Dr, kr, Hkv * Dr, H / Hkv, c, L, 0, L, H, scale};
  mla::decode_attention(g, T, S, 1, o, query_offset, window);
  return MLA_OK;
}
