// Decode attention over rows several query heads share (decode_attention.cpp).
#pragma once
#include <cstdint>
#include "mla.h"

namespace mla {
// Query rows up to which mla_cpu_attention takes decode_attention (its prefill kernel transposes the
// whole key cache first, which pays off only over many rows).
constexpr int64_t DECODE_ROWS = 8;

// Query row t, head h scores scale·(q1[t,h]·k1_s + q2[t,h]·k2_s[h / group2]) and averages v_s.
// Row s of a shared key is k1 + s·ld1 (d1 values), of the value v + s·ldv (dv values); run j of the
// heads (below) reads them from k1 + j·k1_run and v + j·v_run instead (MHA/GQA: its KV head's slice of
// the row; 0 for MLA's one latent row). The optional second key part (d2 > 0; MLA's rope keys) is a
// row k2 + s·ld2 holding one d2 slice per head group of group2 heads. q1 [T,H,d1], q2 [T,H,d2].
// Row elements E: float, or uint16_t holding bf16 bits (a bf16 decode cache held as such on the host:
// half the bytes read; widened exactly, so the results are those of the float rows they stand for).
template <typename E>
struct SharedRowsOf {
  const float* q1;
  int64_t d1;
  const E* k1;
  int64_t ld1;
  int64_t k1_run;
  const float* q2;
  int64_t d2;
  const E* k2;
  int64_t ld2;
  int64_t group2;
  const E* v;
  int64_t ldv;
  int64_t v_run;
  int64_t dv;
  int64_t H;
  float scale;
};
using SharedRows = SharedRowsOf<float>;
using SharedRowsBf16 = SharedRowsOf<uint16_t>;
// o [T,H,dv] for `runs` runs of H / runs consecutive heads, each sharing its rows; causal from t + off,
// within `window` keys (0: all). The bf16 form gives bit for bit what the float form gives on the
// widened rows (the same arithmetic in the same order, on a chunk of rows widened first).
void decode_attention(const SharedRows& g, int64_t T, int64_t S, int64_t runs, float* o, int64_t off, int64_t window);
void decode_attention(const SharedRowsBf16& g, int64_t T, int64_t S, int64_t runs, float* o, int64_t off, int64_t window);
// m rows of n bf16 values (row j at src + j·ld) as float32 into dst [m, n], exactly (bf16 is float32's upper half).
void widen(const uint16_t* src, int64_t ld, int64_t m, int64_t n, float* dst);
// attention's argument checks (attention.cpp), its messages named `what`.
mla_status check_attention(const char* what, const void* q, const void* k, const void* v, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv);
}  // namespace mla
