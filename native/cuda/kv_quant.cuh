// Quantized decode-cache rows on the device (`--kv-cache int8|int4`, src/model/kvQuant.ts): the row
// layout shared by the quantizing scatter, the dequantizing reads and the decode attention.
//
// A store of such rows is one byte buffer (dtype MLA_Q8 or MLA_Q4, one "element" per byte), row r at
// byte r·row_bytes(n): first the n values (int8: one byte each; int4: two a byte, element 2i in the
// low nibble, two's complement), padded to 16 bytes, then one bf16 scale per group of KV_GROUP values,
// padded to 16 bytes. Whole rows are 16-byte aligned, so rows copy as they are (a cache's growth, a
// clone) and a kernel can bring a row in with one bulk copy. Value = q · scale, as kvQuant.ts's
// roundTripRows gives it: scale = bf16(absmax / qmax), q = clamp(round(x / scale), ±qmax).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>
#include "mla.h"

namespace mla {
constexpr int kKvGroup = 32;
__host__ __device__ inline bool kv_quantized(int32_t dtype) { return dtype == MLA_Q8 || dtype == MLA_Q4; }
__host__ __device__ inline int kv_bits(int32_t dtype) { return dtype == MLA_Q4 ? 4 : 8; }
__host__ __device__ inline int64_t kv_pad16(int64_t x) { return (x + 15) & ~int64_t(15); }
__host__ __device__ inline int64_t kv_groups(int64_t n) { return (n + kKvGroup - 1) / kKvGroup; }
// Bytes of a row's values before their padding.
__host__ __device__ inline int64_t kv_value_bytes(int64_t n, int bits) { return bits == 8 ? n : (n + 1) / 2; }
// Offset of a row's scales from its start.
__host__ __device__ inline int64_t kv_scale_offset(int64_t n, int bits) { return kv_pad16(kv_value_bytes(n, bits)); }
__host__ __device__ inline int64_t kv_row_bytes(int64_t n, int bits) { return kv_scale_offset(n, bits) + kv_pad16(2 * kv_groups(n)); }

// Dequantizes the visible rows [lo_b, pos_b] (causal at dpos[b], sliding window) of each of B stores
// of rows of n values into bf16 rows [row, n] at dst[b]; dpos is a device array. Stream-ordered.
mla_status kv_dequant_visible(const unsigned char* const* src_dev, __nv_bfloat16* const* dst_dev, const int32_t* dpos, int64_t window, int64_t B, int64_t n, int bits);
}  // namespace mla
