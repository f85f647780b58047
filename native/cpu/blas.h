// cblas_sgemm from a system OpenBLAS found at load time (nullptr when there is none or it is disabled).
#pragma once
#include <string>

namespace mla {
enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
using Sgemm = void (*)(int order, int transa, int transb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
Sgemm openblas_sgemm();
using Dgemm = void (*)(int order, int transa, int transb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc);
Dgemm openblas_dgemm();
// LAPACK's dsyevd (Fortran ABI) from the same OpenBLAS, nullptr when absent or MHA2MLA_BLAS=own.
using Dsyevd = void (*)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w, double* work, const int* lwork, int* iwork, const int* liwork, int* info);
Dsyevd lapack_dsyevd();
// Runs f with OpenBLAS allowed `threads` threads (it is kept at 1 for GEMM slices inside our OpenMP team).
void with_blas_threads(int threads, void (*f)(void*), void* arg);
const std::string& blas_description();
}  // namespace mla
