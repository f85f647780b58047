// What a decode step's products cost in their present form and in packed forms, before changing the
// runtime (issue 13): the llama2-7b shape's per-layer products of an MLA step (rope keys, latent, the two
// query parts, o_proj, gate, up, down; the per-head products are left out) at M rows, recorded as one
// CUDA graph over LAYERS layers of distinct weights (each layer's ~400 MB is far beyond L2, as in a
// step), with the exact cuBLAS call of native/cuda/linalg.cu's linear (bf16 w and x, float32 y,
// CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT). Forms:
//   now     every product rounds its float32 input to bf16 first (f32_to_bf16), as decode does today;
//   once    the inputs already bf16 (norm outputs written bf16, one rounding per other input);
//   packed  once, and the four products of the normed input as one GEMM over the stacked weights
//           [512 + 2048 + 512 + 3584, 4096], gate and up as one strided-batched GEMM of two;
//   cat     packed, but gate and up as one GEMM over [2 · 11008, 4096] (the output's rows interleave
//           gate and up: the bound for a SwiGLU that reads them in place).
// Prints ms per step and the weights' read rate. Build and run (GPU machine):
//   nvcc -O3 -arch=native -o /tmp/dp bench/decode-products.cu -lcublas && /tmp/dp [M=8] [LAYERS=4]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)
#define CB(x) do { cublasStatus_t e = (x); if (e != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s: %d\n", #x, (int)e); exit(1); } } while (0)

__global__ void f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(x[i]);
}

static cublasHandle_t h;
static cudaStream_t s;
static const float one = 1, zero = 0;

// y [M, N] f32 = x [M, K] bf16 · w [N, K]ᵀ, as linear calls it.
static void gemm(const __nv_bfloat16* w, const __nv_bfloat16* x, float* y, int M, int K, int N) {
  CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w, CUDA_R_16BF, K, x, CUDA_R_16BF, K, &zero, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
static void round_in(const float* x, __nv_bfloat16* y, int64_t n) { f32_to_bf16<<<(n + 255) / 256, 256, 0, s>>>(x, y, n); }

int main(int argc, char** argv) {
  const int M = argc > 1 ? atoi(argv[1]) : 8, LAYERS = argc > 2 ? atoi(argv[2]) : 4;
  const int D = 4096, F = 11008;
  const int proj[4] = {512, 2048, 512, 3584};  // rope keys, latent, query rope rows, query nope rows
  const int P = proj[0] + proj[1] + proj[2] + proj[3];
  CK(cudaStreamCreate(&s));
  CB(cublasCreate(&h));
  CB(cublasSetStream(h, s));
  // Per layer, one allocation: [P, D] projections, [D, D] o, [2F, D] gate then up, [D, F] down.
  const int64_t per = (int64_t)P * D + (int64_t)D * D + 2LL * F * D + (int64_t)D * F;
  std::vector<__nv_bfloat16*> W(LAYERS);
  for (auto& w : W) { CK(cudaMalloc(&w, per * 2)); CK(cudaMemset(w, 0x3c, per * 2)); }
  float *xf, *y;
  __nv_bfloat16* xb;
  CK(cudaMalloc(&xf, sizeof(float) * M * F));
  CK(cudaMemset(xf, 0, sizeof(float) * M * F));
  CK(cudaMalloc(&xb, 2LL * 8 * M * F));
  CK(cudaMalloc(&y, sizeof(float) * M * (2LL * F + P)));
  const double bytes = (double)per * 2 * LAYERS;
  const char* forms[] = {"now", "once", "packed", "cat"};
  for (int form = 0; form < 4; form++) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int l = 0; l < LAYERS; l++) {
      const __nv_bfloat16 *w = W[l], *wo = w + (int64_t)P * D, *wg = wo + (int64_t)D * D, *wu = wg + (int64_t)F * D, *wd = wu + (int64_t)F * D;
      if (form < 2) {
        int64_t off = 0;
        for (int i = 0; i < 4; i++) {
          if (form == 0) round_in(xf, xb, (int64_t)M * D);
          gemm(w + off * D, xb, y + (int64_t)M * off, M, D, proj[i]);
          off += proj[i];
        }
      } else {
        gemm(w, xb, y, M, D, P);
      }
      if (form == 0) round_in(xf, xb, (int64_t)M * D);
      gemm(wo, xb, y, M, D, D);
      if (form < 2) {
        if (form == 0) round_in(xf, xb, (int64_t)M * D);
        gemm(wg, xb, y, M, D, F);
        if (form == 0) round_in(xf, xb, (int64_t)M * D);
        gemm(wu, xb, y + (int64_t)M * F, M, D, F);
      } else if (form == 2) {
        CB(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, F, M, D, &one, wg, CUDA_R_16BF, D, (long long)F * D, xb, CUDA_R_16BF, D, 0, &zero, y, CUDA_R_32F, F, (long long)M * F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      } else {
        gemm(wg, xb, y, M, D, 2 * F);
      }
      if (form == 0) round_in(xf, xb, (int64_t)M * F);
      gemm(wd, xb, y, M, F, D);
    }
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    const int reps = 50;
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; i++) CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    ms /= reps;
    size_t nodes = 0;
    CK(cudaGraphGetNodes(g, nullptr, &nodes));
    printf("M %d, %d layers, %-6s: %.3f ms per step, %zu graph nodes, weights read at %.2f TB/s\n", M, LAYERS, forms[form], ms, nodes, bytes / ms / 1e9);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
  }
  return 0;
}
