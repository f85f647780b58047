// Shared helpers of the CPU build: the per-thread error slot and argument checks.
#pragma once
#include <cstdint>
#include <string>
#include "mla.h"

namespace mla {
mla_status fail(mla_status code, const char* file, int line, const std::string& msg);
// Work (multiply-adds) below which a kernel runs on the calling thread instead of the OpenMP team:
// MHA2MLA_CPU_SERIAL_MACS (a whole number, read once; 0 sends every kernel to the team), 2^20 when
// unset. The default was measured on 2 cores (docs/benchmarks.md, "The CPU under load"); a machine
// with many idle cores may decode faster with a lower bound.
int64_t parallel_macs();
}

#define MLA_FAIL(code, msg) ::mla::fail(code, __FILE__, __LINE__, msg)
#define MLA_CHECK(cond, msg) \
  do {                       \
    if (!(cond)) return MLA_FAIL(MLA_ERR_ARGUMENT, msg); \
  } while (0)
// A buffer of n elements: koffi passes NULL for an empty typed array, so NULL is fine when n == 0.
#define MLA_CHECK_BUF(p, n, msg) MLA_CHECK((n) == 0 || (p), msg)
