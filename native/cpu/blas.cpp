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
    if (auto set = reinterpret_cast<SetThreads>(dlsym(h, "openblas_set_num_threads"))) set(1);  // we split the work ourselves
    description = std::string("OpenBLAS ") + c;
    using CoreName = char* (*)();
    if (auto core = reinterpret_cast<CoreName>(dlsym(h, "openblas_get_corename"))) description += std::string(" (core ") + core() + ")";
    return;
  }
}
}  // namespace

Sgemm openblas_sgemm() {
  std::call_once(once, probe);
  return sgemm_fn;
}

const std::string& blas_description() {
  std::call_once(once, probe);
  return description;
}
}  // namespace mla
