#include "blas.h"
#include "common.h"
#include <cstdlib>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace mla {
static thread_local std::string last_error;

int64_t parallel_macs() {
  static const int64_t bound = [] {
    const char* v = std::getenv("MHA2MLA_CPU_SERIAL_MACS");
    char* end = nullptr;
    const long long n = v && *v ? std::strtoll(v, &end, 10) : -1;
    // The TypeScript side refuses a value that is not a whole number before the library loads.
    return n >= 0 && end && *end == '\0' ? int64_t(n) : int64_t(1) << 20;
  }();
  return bound;
}

mla_status fail(mla_status code, const char* file, int line, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  last_error = std::string(base ? base + 1 : file) + ":" + std::to_string(line) + ": " + msg;
  return code;
}
}  // namespace mla

extern "C" const char* mla_last_error(void) { return mla::last_error.c_str(); }

extern "C" const char* mla_build_info(void) {
  static std::string info;
#if defined(__clang__)
  info = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info = std::string("g++ ") + __VERSION__;
#else
  info = "c++";
#endif
#ifdef MLA_MARCH_NATIVE
  info += " -march=native";
#else
  info += " portable";
#endif
  info += ", " + mla::blas_description();
#ifdef _OPENMP
  info += " OpenMP(" + std::to_string(omp_get_max_threads()) + ")";
#endif
  return info.c_str();
}

extern "C" int mla_num_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

extern "C" void mla_set_num_threads(int n) {
#ifdef _OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}
