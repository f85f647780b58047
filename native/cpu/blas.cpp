// OpenBLAS, when the machine has it: found at load time with dlopen (no build-time dependency, so
// one build serves machines with and without it). MHA2MLA_BLAS=own forces our kernel; a path in
// MHA2MLA_OPENBLAS names the library. Debian's OpenBLAS may pick a slow generic kernel on some
// virtual CPUs unless OPENBLAS_CORETYPE names the right one; we report what it picked and never set it.
#include <dlfcn.h>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include "blas.h"

namespace mla {
namespace {
Sgemm sgemm_fn = nullptr;
Dsyevd dsyevd_fn = nullptr;
Dgemm dgemm_fn = nullptr;
void (*set_threads_fn)(int) = nullptr;
std::string description = "own GEMM";
std::once_flag once;

void probe() {
  const char* mode = std::getenv("MHA2MLA_BLAS");
  if (mode && std::strcmp(mode, "own") == 0) {
    description = "own GEMM (MHA2MLA_BLAS=own)";
    return;
  }
  const char* named = std::getenv("MHA2MLA_OPENBLAS");
  const char* candidates[] = {named, "libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0"};
  for (const char* c : candidates) {
    if (!c) continue;
    void* h = dlopen(c, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    auto f = reinterpret_cast<Sgemm>(dlsym(h, "cblas_sgemm"));
    if (!f) continue;
    sgemm_fn = f;
    using SetThreads = void (*)(int);
    set_threads_fn = reinterpret_cast<SetThreads>(dlsym(h, "openblas_set_num_threads"));
    if (set_threads_fn) set_threads_fn(1);  // we split GEMMs ourselves
    dsyevd_fn = reinterpret_cast<Dsyevd>(dlsym(h, "dsyevd_"));
    dgemm_fn = reinterpret_cast<Dgemm>(dlsym(h, "cblas_dgemm"));
    description = std::string("OpenBLAS ") + c;
    using CoreName = char* (*)();
    if (auto core = reinterpret_cast<CoreName>(dlsym(h, "openblas_get_corename"))) description += std::string(" (core ") + core() + ")";
    if (dsyevd_fn) description += " + LAPACK dsyevd";
    return;
  }
}
}  // namespace

Sgemm openblas_sgemm() {
  std::call_once(once, probe);
  return sgemm_fn;
}

Dgemm openblas_dgemm() {
  std::call_once(once, probe);
  return dgemm_fn;
}

Dsyevd lapack_dsyevd() {
  std::call_once(once, probe);
  return dsyevd_fn;
}

void with_blas_threads(int threads, void (*f)(void*), void* arg) {
  std::call_once(once, probe);
  if (set_threads_fn) set_threads_fn(threads);
  f(arg);
  if (set_threads_fn) set_threads_fn(1);
}

const std::string& blas_description() {
  std::call_once(once, probe);
  return description;
}
}  // namespace mla
