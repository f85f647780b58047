// NCCL for data-parallel training: one communicator per process (one process per GPU), collectives
// on the backend's stream. NCCL is not part of the CUDA toolkit, so it is opened at run time (dlopen)
// from a path the caller picks (the TypeScript side searches MHA2MLA_NCCL_LIB, the loader's path and the
// nvidia-nccl Python wheel): a machine without it still builds and runs everything else. The few
// declarations below are NCCL's stable C ABI (nccl.h, 2.x): a 128-byte unique id, an opaque
// communicator, int enums.
#include <dlfcn.h>
#include <cstring>
#include <string>
#include <type_traits>
#include "common.cuh"

using mla::ctx;

namespace {
struct NcclUniqueId {
  char internal[128];
};
typedef struct NcclComm* NcclCommT;
// ncclDataType_t and ncclRedOp_t values (nccl.h).
constexpr int kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclBfloat16 = 9, kNcclSum = 0;

struct Nccl {
  void* lib = nullptr;
  int (*getVersion)(int*) = nullptr;
  int (*getUniqueId)(NcclUniqueId*) = nullptr;
  int (*commInitRank)(NcclCommT*, int, NcclUniqueId, int) = nullptr;
  int (*allReduce)(const void*, void*, size_t, int, int, NcclCommT, cudaStream_t) = nullptr;
  int (*commDestroy)(NcclCommT) = nullptr;
  const char* (*errorString)(int) = nullptr;
  NcclCommT comm = nullptr;
  int rank = -1, world = 0;
};
Nccl& nccl() {
  static Nccl n;
  return n;
}

std::string nccl_error(int r) {
  const char* s = nccl().errorString ? nccl().errorString(r) : nullptr;
  return "NCCL error " + std::to_string(r) + (s ? std::string(" (") + s + ")" : std::string());
}
}  // namespace

#define NCCL_TRY(call)                                                                                   \
  do {                                                                                                   \
    const int r_ = (call);                                                                               \
    if (r_ != 0) return MLA_FAIL(MLA_ERR_INTERNAL, std::string(#call) + ": " + nccl_error(r_));           \
  } while (0)

// Opens NCCL at `path` (a file, or a bare soname for the loader's search) and returns its version
// (e.g. 22703 for 2.27.3) in *version. A second call with NCCL open already only reports the version.
extern "C" mla_status mla_cuda_nccl_load(const char* path, int32_t* version) {
  MLA_CHECK(path && version, "nccl_load: a path and a version out-pointer");
  Nccl& n = nccl();
  if (!n.lib) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      return MLA_FAIL(MLA_ERR_UNAVAILABLE, std::string("cannot open NCCL at ") + path + ": " + (e ? e : "unknown dlopen error"));
    }
    Nccl m;
    m.lib = lib;
    bool ok = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      ok = ok && fn;
    };
    sym(m.getVersion, "ncclGetVersion");
    sym(m.getUniqueId, "ncclGetUniqueId");
    sym(m.commInitRank, "ncclCommInitRank");
    sym(m.allReduce, "ncclAllReduce");
    sym(m.commDestroy, "ncclCommDestroy");
    sym(m.errorString, "ncclGetErrorString");
    if (!ok) {
      dlclose(lib);
      return MLA_FAIL(MLA_ERR_UNAVAILABLE, std::string(path) + " is not NCCL 2.x (a symbol such as ncclCommInitRank is missing)");
    }
    n = m;
  }
  int v = 0;
  NCCL_TRY(n.getVersion(&v));
  *version = v;
  return MLA_OK;
}

// A new unique id (128 bytes) for rank 0 to hand to every rank before mla_cuda_nccl_init.
extern "C" mla_status mla_cuda_nccl_unique_id(uint8_t* out) {
  MLA_CHECK(out, "nccl_unique_id: a 128-byte output");
  MLA_CHECK(nccl().lib, "nccl_unique_id: NCCL is not loaded (mla_cuda_nccl_load first)");
  NcclUniqueId id;
  NCCL_TRY(nccl().getUniqueId(&id));
  std::memcpy(out, id.internal, sizeof id.internal);
  return MLA_OK;
}

// Joins the communicator of `world` ranks as `rank` on this process's device (blocks until every rank
// has joined). One communicator per process.
extern "C" mla_status mla_cuda_nccl_init(const uint8_t* id, int32_t world, int32_t rank) {
  NEED_CTX();
  Nccl& n = nccl();
  MLA_CHECK(n.lib, "nccl_init: NCCL is not loaded (mla_cuda_nccl_load first)");
  MLA_CHECK(!n.comm, "nccl_init: this process has a communicator already");
  MLA_CHECK(id && world >= 1 && rank >= 0 && rank < world, "nccl_init: a 128-byte id and 0 <= rank < world");
  NcclUniqueId u;
  std::memcpy(u.internal, id, sizeof u.internal);
  NcclCommT comm = nullptr;
  NCCL_TRY(n.commInitRank(&comm, world, u, rank));
  n.comm = comm;
  n.rank = rank;
  n.world = world;
  return MLA_OK;
}

// x ← the sum of every rank's x, in place (f32, bf16 or f64), ordered on the backend's stream.
extern "C" mla_status mla_cuda_nccl_all_reduce_sum(mla_cuda_buf* x) {
  NEED_CTX();
  MLA_CHECK(nccl().comm, "nccl_all_reduce_sum: no communicator (mla_cuda_nccl_init first)");
  MLA_CHECK(x && (x->dtype == MLA_F32 || x->dtype == MLA_BF16 || x->dtype == MLA_F64), "nccl_all_reduce_sum: an f32, bf16 or f64 buffer");
  const int type = x->dtype == MLA_F32 ? kNcclFloat32 : x->dtype == MLA_BF16 ? kNcclBfloat16 : kNcclFloat64;
  if (x->n) NCCL_TRY(nccl().allReduce(x->ptr, x->ptr, (size_t)x->n, type, kNcclSum, nccl().comm, ctx()->stream));
  return MLA_OK;
}

// The sum over ranks of n host doubles, in place (through a device scratch; returns once it is back).
extern "C" mla_status mla_cuda_nccl_all_reduce_host(double* values, int64_t n) {
  NEED_CTX();
  MLA_CHECK(nccl().comm, "nccl_all_reduce_host: no communicator (mla_cuda_nccl_init first)");
  MLA_CHECK(values && n >= 1 && n <= 1024, "nccl_all_reduce_host: 1 to 1024 host doubles");
  mla_status st;
  auto* d = (double*)mla::scratch(sizeof(double) * n, &st);
  if (!d) return st;
  CUDA_TRY(cudaMemcpyAsync(d, values, sizeof(double) * n, cudaMemcpyHostToDevice, ctx()->stream));
  NCCL_TRY(nccl().allReduce(d, d, (size_t)n, kNcclFloat64, kNcclSum, nccl().comm, ctx()->stream));
  CUDA_TRY(cudaMemcpyAsync(values, d, sizeof(double) * n, cudaMemcpyDeviceToHost, ctx()->stream));
  CUDA_TRY(cudaStreamSynchronize(ctx()->stream));
  return MLA_OK;
}

// Leaves the communicator (after the stream's work); a process may then join another.
extern "C" mla_status mla_cuda_nccl_destroy(void) {
  Nccl& n = nccl();
  if (!n.comm) return MLA_OK;
  if (ctx()) CUDA_TRY(cudaStreamSynchronize(ctx()->stream));
  const int r = n.commDestroy(n.comm);
  n.comm = nullptr;
  n.rank = -1;
  n.world = 0;
  if (r != 0) return MLA_FAIL(MLA_ERR_INTERNAL, "ncclCommDestroy: " + nccl_error(r));
  return MLA_OK;
}
