// Decode attention over rows several query heads share (decode_attention.cpp).
#pragma once
#include <cstdint>

namespace mla {
// Query row t, head h scores scale·(q1[t,h]·k1_s + q2[t,h]·k2_s[h / group2]) and averages v_s.
// Row s of a shared key is k1 + s·ld1 (d1 values), of the value v + s·ldv (dv values); run j of the
// heads (below) reads them from k1 + j·k1_run and v + j·v_run instead (MHA/GQA: its KV head's slice of
// the row; 0 for MLA's one latent row). The optional second key part (d2 > 0; MLA's rope keys) is a
// row k2 + s·ld2 holding one d2 slice per head group of group2 heads. q1 [T,H,d1], q2 [T,H,d2].
struct SharedRows {
  const float* q1;
  int64_t d1;
  const float* k1;
  int64_t ld1;
  int64_t k1_run;
  const float* q2;
  int64_t d2;
  const float* k2;
  int64_t ld2;
  int64_t group2;
  const float* v;
  int64_t ldv;
  int64_t v_run;
  int64_t dv;
  int64_t H;
  float scale;
};
// o [T,H,dv] for `runs` runs of H / runs consecutive heads, each sharing its rows; causal from t + off,
// within `window` keys (0: all).
void decode_attention(const SharedRows& g, int64_t T, int64_t S, int64_t runs, float* o, int64_t off, int64_t window);
}  // namespace mla
