// Tensor-core building blocks shared by the fused kernels (attention_mma.cu, latent_decode.cu):
// mma.sync m16n8k16 on bf16 with float32 accumulation, ldmatrix fragment loads from shared memory,
// and cp.async copies global → shared. sm_80 and newer.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

namespace mla_mma {
using bf16 = __nv_bfloat16;
// c[16×8] += a[16×16]·b[16×8], float32 accumulate; the inputs bf16 (T = bf16, the default) or fp16 (T = __half:
// the int8 latent kernel's integers, exact in fp16).
template <class T = bf16>
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, __half>, "mma: bf16 or fp16 inputs");
  if constexpr (std::is_same_v<T, bf16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// 2^x on the special-function unit, flushing denormals (−∞ → 0, which masked scores rely on).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// Four 8×8 bf16 matrices from shared memory (lane i gives the address of a row of matrix i / 8);
// `trans` delivers each transposed.
template <bool trans>
__device__ __forceinline__ void ldmatrix4(uint32_t* r, const bf16* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  if (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// 16 bytes global → shared without passing through registers; zeros when !ok.
__device__ __forceinline__ void cp16(bf16* s, const bf16* g, bool ok) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(s);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// The A fragment (16 rows × k0 … k0+15) of a row-major [row][k] shared matrix with row stride ld.
__device__ __forceinline__ void frag_a(uint32_t* a, const bf16* m, int ld, int k0, int lane) {
  ldmatrix4<false>(a, m + (lane & 15) * ld + k0 + (lane >> 4) * 8);
}
// The B fragments of n-tiles n0 … n0+15 (two n8 tiles: b[0..1] and b[2..3]) over k0 … k0+15, for B
// stored [n][k] (keys as rows, B = Kᵀ) …
__device__ __forceinline__ void frag_b_nk(uint32_t* b, const bf16* m, int ld, int n0, int k0, int lane) {
  ldmatrix4<false>(b, m + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
// … or stored [k][n] (B = V, rows over the contraction).
__device__ __forceinline__ void frag_b_kn(uint32_t* b, const bf16* m, int ld, int n0, int k0, int lane) {
  ldmatrix4<true>(b, m + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}
}  // namespace mla_mma
