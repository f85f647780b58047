// Quantized decode-cache rows (`--kv-cache int8|int4`; layout and semantics in kv_quant.cuh): the
// quantizing writes of new rows, the dequantizing reads of a store's rows (a prompt chunk's attention
// over its cache, a float32 view) and of the visible rows of a decode batch (dequant_visible, ahead of
// the bf16 decode kernels, where no kernel reads the integers itself: latent_decode_q8.cu and
// mha_decode.cu do for int8). The values match kvQuant.ts's roundTripRows bit for bit: absmax over the
// group's float32 values, its scale rounded float64 → float32 → bf16, each value divided in float64 and
// rounded half up as Math.round does.
#include <algorithm>
#include <cmath>
#include <vector>
#include "common.cuh"
#include "kv_quant.cuh"

using mla::ctx;

namespace {
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ int qmax_of(int bits) { return bits == 8 ? 127 : 7; }

// Math.round: the nearest integer, halves toward +∞.
__device__ __forceinline__ double js_round(double v) {
  const double r = floor(v);
  return v - r >= 0.5 ? r + 1 : r;
}

// The bf16 bits of a quiet NaN: the scale of a group holding a NaN or ±Inf, so it reads back as NaN (a
// diverged model shows downstream as it does with a float32 cache, not hidden as zeros).
constexpr unsigned short kNanScale = 0x7fc0;

// Row r of src [R, n] into its target: dst[r] (the row's address), or in a decode graph dst[r] (the
// store's base) + pos[r]·row_bytes (the sequence's next row). One warp per group of 32 values.
__global__ void k_kv_quant_rows(const float* src, unsigned char* const* dst, const int32_t* pos, int64_t n, int bits) {
  const int lane = threadIdx.x & 31;
  const int64_t g = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (g >= mla::kv_groups(n)) return;
  const int64_t r = blockIdx.y, e = g * mla::kKvGroup + lane;
  unsigned char* row = pos ? dst[r] + (int64_t)pos[r] * mla::kv_row_bytes(n, bits) : dst[r];
  const float x = e < n ? src[r * n + e] : 0.f;
  const bool bad = __any_sync(0xffffffffu, !isfinite(x));
  float amax = fabsf(x);
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int qmax = qmax_of(bits);
  const __nv_bfloat16 s = __float2bfloat16_rn((float)((double)amax / qmax));
  const float sf = __bfloat162float(s);
  int q = 0;
  if (!bad && sf > 0) q = (int)::fmax((double)-qmax, ::fmin((double)qmax, js_round((double)x / sf)));
  if (bits == 8) {
    if (e < n) row[e] = (unsigned char)(signed char)q;
  } else {
    const int hi = __shfl_down_sync(0xffffffffu, q, 1);
    if (!(lane & 1) && e < n) row[e / 2] = (unsigned char)((q & 0xf) | ((hi & 0xf) << 4));
  }
  if (lane == 0) {
    unsigned short bits16 = bad ? kNanScale : __bfloat16_as_ushort(s);
    ((unsigned short*)(row + mla::kv_scale_offset(n, bits)))[g] = bits16;
  }
}

// Value e of a quantized row.
__device__ __forceinline__ float kv_value(const unsigned char* row, int64_t e, int64_t n, int bits) {
  const float s = __bfloat162float(((const __nv_bfloat16*)(row + mla::kv_scale_offset(n, bits)))[e / mla::kKvGroup]);
  int q;
  if (bits == 8) q = (signed char)row[e];
  else {
    const int byte = row[e / 2];
    q = e & 1 ? byte >> 4 : byte & 0xf;
    q = q >= 8 ? q - 16 : q;
  }
  return (float)q * s;
}

template <typename Out>
__device__ __forceinline__ void put(Out* y, int64_t i, float v) {
  if constexpr (sizeof(Out) == 4) y[i] = v;
  else y[i] = __float2bfloat16_rn(v);
}

// Rows [row0, row0 + gridDim.y) of a store → y [rows, n].
template <typename Out>
__global__ void k_kv_dequant_rows(const unsigned char* src, int64_t row0, int64_t n, int bits, Out* y) {
  const int64_t r = blockIdx.y;
  const unsigned char* row = src + (row0 + r) * mla::kv_row_bytes(n, bits);
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) put(y + r * n, e, kv_value(row, e, n, bits));
}

// Eight values of an int8 row from e (e % 8 == 0, n % 8 == 0: one 8-byte load, one 16-byte store;
// a group of 32 holds whole runs of eight, so one scale).
__device__ __forceinline__ void dequant8(const unsigned char* row, int64_t e, int64_t n, int bits, __nv_bfloat16* out) {
  const float s = __bfloat162float(((const __nv_bfloat16*)(row + mla::kv_scale_offset(n, bits)))[e / mla::kKvGroup]);
  int q[8];
  if (bits == 8) {
    const uint2 v = *(const uint2*)(row + e);
    for (int i = 0; i < 4; i++) q[i] = (signed char)(v.x >> (8 * i)), q[4 + i] = (signed char)(v.y >> (8 * i));
  } else {
    const uint32_t v = *(const uint32_t*)(row + e / 2);
    for (int i = 0; i < 8; i++) {
      const int nib = (v >> (4 * i)) & 0xf;
      q[i] = nib >= 8 ? nib - 16 : nib;
    }
  }
  __align__(16) __nv_bfloat162 o[4];
  for (int i = 0; i < 4; i++) o[i] = __floats2bfloat162_rn((float)q[2 * i] * s, (float)q[2 * i + 1] * s);
  *(uint4*)out = *(const uint4*)o;
}

// Block (x, b): the visible rows of store b, every gridDim.x-th from lo_b + x.
__global__ void k_kv_dequant_visible(const unsigned char* const* src, __nv_bfloat16* const* dst, const int32_t* pos, int64_t window, int64_t n, int bits) {
  const int64_t b = blockIdx.y, S = (int64_t)pos[b] + 1;
  const int64_t lo = window > 0 && S > window ? S - window : 0;
  const int64_t rb = mla::kv_row_bytes(n, bits);
  const bool vec = n % 8 == 0;
  for (int64_t r = lo + blockIdx.x; r < S; r += gridDim.x) {
    const unsigned char* row = src[b] + r * rb;
    __nv_bfloat16* out = dst[b] + r * n;
    if (vec)
      for (int64_t e = 8 * (int64_t)threadIdx.x; e < n; e += 8 * (int64_t)blockDim.x) dequant8(row, e, n, bits, out + e);
    else
      for (int64_t e = threadIdx.x; e < n; e += blockDim.x) out[e] = __float2bfloat16_rn(kv_value(row, e, n, bits));
  }
}
}  // namespace

namespace mla {
mla_status kv_dequant_visible(const unsigned char* const* src_dev, __nv_bfloat16* const* dst_dev, const int32_t* dpos, int64_t window, int64_t B, int64_t n, int bits) {
  if (n == 0 || B == 0) return MLA_OK;
  // ~8 blocks per SM over the batch: each block a strided share of one sequence's rows.
  const unsigned per = (unsigned)std::max<int64_t>(1, std::min<int64_t>(1024, (8 * (int64_t)mla::sm_count() + B - 1) / B));
  k_kv_dequant_visible<<<dim3(per, (unsigned)B), 256, 0, ctx()->stream>>>(src_dev, dst_dev, dpos, window, n, bits);
  KERNEL_CHECK();
  return MLA_OK;
}
}  // namespace mla

extern "C" mla_status mla_cuda_kv_quant_rows(const mla_cuda_buf* src, mla_cuda_buf* const* dsts, const int64_t* rows, int64_t R, int64_t n) {
  NEED_CTX();
  MLA_CHECK(src && dsts && rows && R > 0 && n >= 0 && src->n == R * n && src->dtype == MLA_F32, "kv_quant_rows: src [R, n] float32, R destinations");
  if (n == 0) return MLA_OK;
  const int32_t dt = dsts[0] ? dsts[0]->dtype : -1;
  MLA_CHECK(mla::kv_quantized(dt), "kv_quant_rows: destinations must be quantized stores (int8 or int4)");
  const int bits = mla::kv_bits(dt);
  const int64_t rb = mla::kv_row_bytes(n, bits);
  std::vector<unsigned char*> targets(R);
  for (int64_t r = 0; r < R; r++) {
    MLA_CHECK(dsts[r] && dsts[r]->dtype == dt && rows[r] >= 0 && (rows[r] + 1) * rb <= dsts[r]->n, "kv_quant_rows: destination " + std::to_string(r) + " has no room for row " + std::to_string(rows[r]) + " of " + std::to_string(rb) + " bytes, or is not of destination 0's dtype");
    targets[r] = (unsigned char*)dsts[r]->ptr + rows[r] * rb;
  }
  mla_status st = MLA_OK;
  const void* dev = nullptr;
  const int32_t* pos = nullptr;
  if (mla::capturing()) {
    // A decode graph: each row is its sequence's next row, at the step's position (as scatter_rows).
    std::vector<int32_t> at(R);
    for (int64_t r = 0; r < R; r++) {
      at[r] = (int32_t)rows[r];
      targets[r] = (unsigned char*)dsts[r]->ptr;
    }
    if (!(pos = mla::step_positions(at.data(), R))) return MLA_FAIL(MLA_ERR_UNSUPPORTED, "kv_quant_rows: rows other than the captured step's positions");
    if (!(dev = mla::capture_constant(targets.data(), R * sizeof(char*), &st))) return st;
  } else {
    void* d = mla::scratch(R * sizeof(char*), &st);
    if (!d) return st;
    if (mla_status e = mla::stage_to_device(targets.data(), R * sizeof(char*), d)) return e;
    dev = d;
  }
  const unsigned blocks = (unsigned)((mla::kv_groups(n) + kWarpsPerBlock - 1) / kWarpsPerBlock);
  for (int64_t done = 0; done < R; done += 65535) {  // grid.y's limit (a long prompt's rows)
    const unsigned rowsNow = (unsigned)std::min<int64_t>(65535, R - done);
    k_kv_quant_rows<<<dim3(blocks, rowsNow), 32 * kWarpsPerBlock, 0, ctx()->stream>>>((const float*)src->ptr + done * n, (unsigned char* const*)dev + done, pos ? pos + done : nullptr, n, bits);
    KERNEL_CHECK();
  }
  return MLA_OK;
}

extern "C" mla_status mla_cuda_kv_dequant_rows(const mla_cuda_buf* src, int64_t row0, int64_t count, int64_t n, mla_cuda_buf* dst) {
  NEED_CTX();
  MLA_CHECK(src && dst && mla::kv_quantized(src->dtype) && row0 >= 0 && count >= 0 && n >= 0, "kv_dequant_rows: a quantized store, rows ≥ 0");
  const int bits = mla::kv_bits(src->dtype);
  MLA_CHECK((row0 + count) * mla::kv_row_bytes(n, bits) <= src->n, "kv_dequant_rows: rows past the store's end");
  MLA_CHECK(dst->n == count * n && (dst->dtype == MLA_F32 || dst->dtype == MLA_BF16), "kv_dequant_rows: dst [count, n] float32 or bf16");
  if (count == 0 || n == 0) return MLA_OK;
  const unsigned chunks = (unsigned)std::min<int64_t>(64, (n + 255) / 256);
  for (int64_t done = 0; done < count; done += 65535) {  // grid.y's limit
    const unsigned rows = (unsigned)std::min<int64_t>(65535, count - done);
    const unsigned char* s = (const unsigned char*)src->ptr;
    if (dst->dtype == MLA_F32) k_kv_dequant_rows<<<dim3(chunks, rows), 256, 0, ctx()->stream>>>(s, row0 + done, n, bits, (float*)dst->ptr + done * n);
    else k_kv_dequant_rows<<<dim3(chunks, rows), 256, 0, ctx()->stream>>>(s, row0 + done, n, bits, (__nv_bfloat16*)dst->ptr + done * n);
    KERNEL_CHECK();
  }
  return MLA_OK;
}
