// Naive row-major cblas_sgemm stand-in for testing the OpenBLAS route's argument slicing.
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int p = 0; p < k; p++) {
        float av = ta == 111 ? a[i * lda + p] : a[p * lda + i];
        float bv = tb == 111 ? b[p * ldb + j] : b[j * ldb + p];
        s += (double)av * bv;
      }
      c[i * ldc + j] = alpha * (float)s + (beta == 0 ? 0 : beta * c[i * ldc + j]);
    }
}
char* openblas_get_corename(void) { return "fake"; }
void openblas_set_num_threads(int n) {}
