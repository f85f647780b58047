// Device, stream, handles, buffers and errors of the CUDA build.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include "common.cuh"

namespace mla {
// One error slot for the process, not per thread: koffi runs asynchronous calls (the conversion's
// factorization) on worker threads, and the JavaScript thread reads the message afterwards.
static std::mutex error_mutex;
static std::string last_error;
static Context* the_ctx = nullptr;
static void* scratch_ptr = nullptr;
static size_t scratch_bytes = 0;

Context* ctx() { return the_ctx; }

mla_status fail(mla_status code, const char* file, int line, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  std::lock_guard<std::mutex> lock(error_mutex);
  last_error = std::string(base ? base + 1 : file) + ":" + std::to_string(line) + ": " + msg;
  return code;
}

const char* cublas_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS error";
  }
}

size_t dtype_size(int32_t dtype) {
  switch (dtype) {
    case MLA_F32: return 4;
    case MLA_BF16: return 2;
    case MLA_F64: return 8;
    case MLA_I32: return 4;
    case MLA_Q8:
    case MLA_Q4: return 1;
    default: return 0;
  }
}

int sm_count() {
  static int n = 0;
  if (!n && cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, the_ctx->device) != cudaSuccess) n = 1;
  return n;
}

void* scratch(size_t bytes, mla_status* st) {
  if (capturing()) return capture_scratch(bytes, st);
  *st = MLA_OK;
  if (bytes <= scratch_bytes) return scratch_ptr;
  if (scratch_ptr) cudaFreeAsync(scratch_ptr, the_ctx->stream);
  scratch_ptr = nullptr;
  scratch_bytes = 0;
  size_t want = bytes < (1u << 20) ? (1u << 20) : bytes;
  cudaError_t e = cudaMallocAsync(&scratch_ptr, want, the_ctx->stream);
  if (e != cudaSuccess) {
    *st = fail(MLA_ERR_MEMORY, __FILE__, __LINE__, "scratch of " + std::to_string(want) + " bytes: " + cudaGetErrorString(e));
    scratch_ptr = nullptr;
    return nullptr;
  }
  scratch_bytes = want;
  return scratch_ptr;
}

namespace {
// Pinned host slots, reused round-robin once the copy that last read a slot has completed. Waiting for
// that copy lets the host run at most kSlots small copies ahead of the GPU, never behind it.
struct PinnedRing {
  static constexpr int kSlots = 64;
  void* host[kSlots] = {};
  size_t bytes[kSlots] = {};
  cudaEvent_t done[kSlots] = {};
  int next = 0;
  double waited_ms = 0;
};
PinnedRing ring;
}  // namespace

double ring_waited_ms() { return ring.waited_ms; }

mla_status stage_to_device(const void* data, size_t bytes, void* device) {
  if (bytes == 0) return MLA_OK;
  // A replay would copy whatever the pinned slot holds by then.
  if (capturing()) return refuse("an op staged host data (" + std::to_string(bytes) + " bytes) that a replay would not refresh");
  // Large one-off uploads (conversion inputs) go directly; staging is for the per-op tables.
  if (bytes > kStageLimit) {
    CUDA_TRY(cudaMemcpyAsync(device, data, bytes, cudaMemcpyHostToDevice, the_ctx->stream));
    return MLA_OK;
  }
  const int i = ring.next;
  ring.next = (i + 1) % PinnedRing::kSlots;
  if (!ring.done[i]) {
    CUDA_TRY(cudaEventCreateWithFlags(&ring.done[i], cudaEventDisableTiming));
  } else if (cudaEventQuery(ring.done[i]) == cudaErrorNotReady) {
    // The host is kSlots copies ahead of the GPU: this wait is the device's time, not the host's.
    const auto t0 = std::chrono::steady_clock::now();
    CUDA_TRY(cudaEventSynchronize(ring.done[i]));
    ring.waited_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  } else {
    CUDA_TRY(cudaEventSynchronize(ring.done[i]));  // complete, or an error to report
  }
  if (ring.bytes[i] < bytes) {
    if (ring.host[i]) CUDA_TRY(cudaFreeHost(ring.host[i]));
    ring.host[i] = nullptr;
    const size_t want = bytes < 65536 ? 65536 : bytes * 2;
    CUDA_TRY(cudaMallocHost(&ring.host[i], want));
    ring.bytes[i] = want;
  }
  memcpy(ring.host[i], data, bytes);
  CUDA_TRY(cudaMemcpyAsync(device, ring.host[i], bytes, cudaMemcpyHostToDevice, the_ctx->stream));
  CUDA_TRY(cudaEventRecord(ring.done[i], the_ctx->stream));
  return MLA_OK;
}

DevMem::~DevMem() {
  if (p) cudaFreeAsync(p, ctx()->stream);
}

mla_status dev_alloc(DevMem& m, size_t bytes, const char* what) {
  if (cudaMallocAsync(&m.p, bytes > 0 ? bytes : 1, ctx()->stream) != cudaSuccess) {
    cudaGetLastError();
    m.p = nullptr;
    return MLA_FAIL(MLA_ERR_MEMORY, std::string("out of GPU memory for ") + what + " of " + std::to_string((int64_t)bytes >> 20) + " MiB");
  }
  return MLA_OK;
}

AttentionRoute attention_route() {
  const char* e = getenv("MHA2MLA_CUDA_ATTENTION");
  if (!e) return AttentionRoute::Auto;
  if (strcmp(e, "cudnn") == 0) return AttentionRoute::Cudnn;
  if (strcmp(e, "fused") == 0) return AttentionRoute::Fused;
  if (strcmp(e, "gemm") == 0) return AttentionRoute::Gemm;
  if (strcmp(e, "flash") == 0) return AttentionRoute::Flash;
  if (strcmp(e, "rows") == 0) return AttentionRoute::Rows;
  return AttentionRoute::Auto;
}

bool use_mma(bool bf16, int64_t Dh, int64_t Dv) {
  const AttentionRoute r = attention_route();
  return bf16 && attention_mma_dims(Dh, Dv) && (r == AttentionRoute::Auto || r == AttentionRoute::Fused || r == AttentionRoute::Cudnn);
}
}  // namespace mla

using mla::ctx;

extern "C" const char* mla_last_error(void) { return mla::last_error.c_str(); }

extern "C" mla_status mla_cuda_init(int device) {
  if (ctx()) return ctx()->device == device ? MLA_OK : MLA_FAIL(MLA_ERR_ARGUMENT, "CUDA already initialized on device " + std::to_string(ctx()->device));
  int driver = 0, runtime = 0, count = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    std::string why = std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
    if (driver == 0) why += "; no NVIDIA driver found";
    else if (driver < runtime) why += "; the driver supports CUDA " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + " but this library was built with CUDA " + std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10) + " (driver/toolkit mismatch: update the driver or build with an older toolkit)";
    return MLA_FAIL(MLA_ERR_UNAVAILABLE, "no usable GPU: " + why);
  }
  if (count == 0) return MLA_FAIL(MLA_ERR_UNAVAILABLE, "no GPU visible (cudaGetDeviceCount = 0; check CUDA_VISIBLE_DEVICES)");
  MLA_CHECK(device >= 0 && device < count, "device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " visible)");
  CUDA_TRY(cudaSetDevice(device));
  auto* c = new mla::Context();
  c->device = device;
  CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  cudaMemPool_t pool;
  CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep = UINT64_MAX;  // never hand freed blocks back to the driver between calls
  CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  CUBLAS_TRY(cublasCreate(&c->blas));
  CUBLAS_TRY(cublasSetStream(c->blas, c->stream));
  // A workspace of our own, set after the stream (which resets it): cuBLAS then allocates nothing
  // itself, which a decode graph capture needs (cuBLAS's "CUDA Graphs Support").
  CUDA_TRY(cudaMalloc(&c->blas_workspace, mla::kBlasWorkspace));
  CUBLAS_TRY(cublasSetWorkspace(c->blas, c->blas_workspace, mla::kBlasWorkspace));
  CUSOLVER_TRY(cusolverDnCreate(&c->solver));
  CUSOLVER_TRY(cusolverDnSetStream(c->solver, c->stream));
  cudaDeviceProp p;
  CUDA_TRY(cudaGetDeviceProperties(&p, device));
  c->info = std::string(p.name) + ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB, sm_" + std::to_string(p.major) + std::to_string(p.minor) +
            ", driver CUDA " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + ", runtime " + std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10);
  mla::the_ctx = c;
  return MLA_OK;
}

extern "C" const char* mla_cuda_info(void) { return ctx() ? ctx()->info.c_str() : ""; }

extern "C" mla_cuda_buf* mla_cuda_alloc(int64_t n, int32_t dtype) {
  if (!ctx()) {
    MLA_FAIL(MLA_ERR_ARGUMENT, "CUDA backend not initialized: call mla_cuda_init first");
    return nullptr;
  }
  const size_t es = mla::dtype_size(dtype);
  if (es == 0 || n < 0) {
    MLA_FAIL(MLA_ERR_ARGUMENT, "alloc: bad dtype " + std::to_string(dtype) + " or size " + std::to_string(n));
    return nullptr;
  }
  auto* b = new mla_cuda_buf{nullptr, n, dtype, true};
  const size_t bytes = (size_t)(n > 0 ? n : 1) * es;
  cudaError_t e = cudaMallocAsync(&b->ptr, bytes, ctx()->stream);
  if (e != cudaSuccess) {
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    cudaGetLastError();
    MLA_FAIL(MLA_ERR_MEMORY, "out of GPU memory allocating " + std::to_string(bytes) + " bytes (" + std::to_string(bytes >> 20) + " MiB); " + std::to_string(ctx()->live_bytes >> 20) + " MiB held by mha2mla, " + std::to_string(fr >> 20) + " of " + std::to_string(tot >> 20) + " MiB free on the device");
    delete b;
    return nullptr;
  }
  if (mla::capturing()) {
    mla::capture_made(b);  // a graph allocation: counted by no one, freed by the graph or in it
    return b;
  }
  ctx()->live_bytes += bytes;
  if (ctx()->live_bytes > ctx()->peak_bytes) ctx()->peak_bytes = ctx()->live_bytes;
  return b;
}

extern "C" void mla_cuda_free(mla_cuda_buf* b) {
  if (!b || !ctx()) return;
  if (b->owner && mla::capturing()) {
    if (mla::capture_free(b)) ctx()->live_bytes -= (int64_t)((b->n > 0 ? b->n : 1) * mla::dtype_size(b->dtype));
    else cudaFreeAsync(b->ptr, ctx()->stream);
  } else if (b->owner) {
    cudaFreeAsync(b->ptr, ctx()->stream);
    ctx()->live_bytes -= (int64_t)((b->n > 0 ? b->n : 1) * mla::dtype_size(b->dtype));
  }
  delete b;
}

extern "C" mla_cuda_buf* mla_cuda_view(const mla_cuda_buf* parent, int64_t offset, int64_t n) {
  if (!parent || offset < 0 || n < 0 || offset + n > parent->n) {
    MLA_FAIL(MLA_ERR_ARGUMENT, "view: range outside the buffer");
    return nullptr;
  }
  return new mla_cuda_buf{(char*)parent->ptr + offset * mla::dtype_size(parent->dtype), n, parent->dtype, false};
}

extern "C" mla_status mla_cuda_copy(mla_cuda_buf* dst, int64_t dst_offset, const mla_cuda_buf* src, int64_t src_offset, int64_t n) {
  NEED_CTX();
  MLA_CHECK(dst && src && dst->dtype == src->dtype && dst_offset >= 0 && src_offset >= 0 && n >= 0 && dst_offset + n <= dst->n && src_offset + n <= src->n, "copy: range outside a buffer or dtypes differ");
  const size_t es = mla::dtype_size(dst->dtype);
  if (n) CUDA_TRY(cudaMemcpyAsync((char*)dst->ptr + dst_offset * es, (const char*)src->ptr + src_offset * es, n * es, cudaMemcpyDeviceToDevice, ctx()->stream));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_upload(mla_cuda_buf* dst, const void* host, int64_t bytes) {
  NEED_CTX();
  if (mla::capturing()) return mla::refuse("an upload waits for the device, which a graph cannot record");
  if (dst && bytes == 0 && dst->n == 0) return MLA_OK;  // an empty tensor (its host array may come as null)
  MLA_CHECK(dst && host && bytes == dst->n * (int64_t)mla::dtype_size(dst->dtype), "upload: size mismatch");
  CUDA_TRY(cudaMemcpyAsync(dst->ptr, host, bytes, cudaMemcpyHostToDevice, ctx()->stream));
  CUDA_TRY(cudaStreamSynchronize(ctx()->stream));  // the host array may be reused by JavaScript right after
  return MLA_OK;
}

extern "C" mla_status mla_cuda_download(const mla_cuda_buf* src, void* host, int64_t bytes) {
  NEED_CTX();
  if (mla::capturing()) return mla::refuse("a download waits for the device, which a graph cannot record");
  if (src && bytes == 0 && src->n == 0) return MLA_OK;
  MLA_CHECK(src && host && bytes == src->n * (int64_t)mla::dtype_size(src->dtype), "download: size mismatch");
  CUDA_TRY(cudaMemcpyAsync(host, src->ptr, bytes, cudaMemcpyDeviceToHost, ctx()->stream));
  CUDA_TRY(cudaStreamSynchronize(ctx()->stream));
  return MLA_OK;
}

extern "C" mla_status mla_cuda_memory(int64_t* out) {
  NEED_CTX();
  size_t fr = 0, tot = 0;
  CUDA_TRY(cudaMemGetInfo(&fr, &tot));
  out[0] = ctx()->live_bytes;
  out[1] = ctx()->peak_bytes;
  out[2] = (int64_t)fr;
  out[3] = (int64_t)tot;
  return MLA_OK;
}

extern "C" mla_status mla_cuda_reset_peak(void) {
  NEED_CTX();
  ctx()->peak_bytes = ctx()->live_bytes;
  return MLA_OK;
}

extern "C" double mla_cuda_host_wait_ms(void) { return mla::ring_waited_ms(); }

extern "C" mla_status mla_cuda_synchronize(void) {
  NEED_CTX();
  if (mla::capturing()) return mla::refuse("a synchronization waits for the device, which a graph cannot record");
  CUDA_TRY(cudaStreamSynchronize(ctx()->stream));
  return MLA_OK;
}
