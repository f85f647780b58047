// cblas_sgemm from a system OpenBLAS found at load time (nullptr when there is none or it is disabled).
#pragma once
#include <string>

namespace mla {
enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
using Sgemm = void (*)(int order, int transa, int transb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
Sgemm openblas_sgemm();
const std::string& blas_description();
}  // namespace mla
