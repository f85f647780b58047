// Decode attention over a bf16 cache held as bf16 on the host (the native CPU backend's bf16 row
// store, src/backends/native/hostRowStore.ts): the rows are read as stored, half the bytes of the
// float32 rows the cache used to hold, and widened exactly (bf16 is float32's upper half) chunk by
// chunk inside decode_attention. Results equal mla_cpu_attention / mla_cpu_latent_attention on the
// widened rows bit for bit: the same kernels, the same order of arithmetic. (The latent entry,
// mla_cpu_latent_attention_bf16, is decode_attention.cpp's, beside the float one it shares its checks with.)
#include <vector>
#include "common.h"
#include "decode_attention.h"

namespace {
// n bf16 values as float32.
std::vector<float> widened(const uint16_t* x, int64_t n) {
  std::vector<float> out(n);
  mla::widen(x, n, 1, n, out.data());
  return out;
}
}  // namespace

extern "C" mla_status mla_cpu_attention_bf16_kv(const float* q, const uint16_t* k, const uint16_t* v, float* o, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t query_offset, int64_t window) {
  if (mla_status st = mla::check_attention("attention (bf16 cache)", q, k, v, T, S, H, Hkv, Dh, Dv)) return st;
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
