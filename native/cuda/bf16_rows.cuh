// Consecutive bf16 of a row as float, in one 4-, 8- or 16-byte load: the decode kernels' row reads
// (mha_decode.cu) and the decode products' weight and activation reads (gemv.cu); the products' f32-or-bf16
// output (gemv.cu, head_kn.cu).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

namespace mla_bf16 {
// Eight bf16 packed in a uint4 (one 16-byte load) as float.
__device__ __forceinline__ void unpack8(uint4 u, float* x) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    x[2 * i] = f.x, x[2 * i + 1] = f.y;
  }
}

// 16 bytes of weights, read-only, not kept in L1 (a decode product's activations are what L1 should hold).
__device__ __forceinline__ uint4 load_weights16(const __nv_bfloat16* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Whether p is 16-byte aligned (what load_weights16 and the 16-byte row loads need).
inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// E consecutive bf16 at p as float (E = 2, 4 or 8; p aligned to 2·E bytes).
template <int E>
__device__ __forceinline__ void load_row(const __nv_bfloat16* p, float* x) {
  if constexpr (E == 2) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    x[0] = f.x, x[1] = f.y;
  } else if constexpr (E == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x)), b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
  } else {
    unpack8(*reinterpret_cast<const uint4*>(p), x);
  }
}

// y's element i: float32, or rounded to bf16 where the product's only readers are bf16 products (the
// caller's y_bf16: the same bits as a float32 y rounded by the next product's input rounding).
__device__ __forceinline__ void store_y(void* y, bool ybf16, int64_t i, float v) {
  if (ybf16) static_cast<__nv_bfloat16*>(y)[i] = __float2bfloat16(v);
  else static_cast<float*>(y)[i] = v;
}
}  // namespace mla_bf16
