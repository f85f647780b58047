// A decode step captured once into a CUDA graph and replayed (issue 13, docs/decode-graphs-design.md):
// a step of a 32-layer model is ~1,000 kernel launches and ~1,700 library calls from JavaScript, which
// bound decode at small batches; a replay is one launch.
//
// What a capture changes in the ops it records (each checks `capturing()`):
//  - per-step inputs come from the graph's own device buffer: token ids (embedding) and positions
//    (rope, the cache scatter, the latent kernel's visible range), written before every launch;
//  - tables that stay fixed while the graph lives (rope frequencies, cache base pointers) are uploaded
//    once into device memory the graph owns (capture_constant), never staged through the pinned ring,
//    whose slots later ops overwrite;
//  - scratch comes from blocks the graph owns, so eager ops that grow the process scratch afterwards
//    cannot free an address the graph baked in;
//  - buffers the step allocates become graph allocations (stream-ordered allocations under capture);
//    those still live at the end of the capture (the logits, and what JavaScript has not disposed yet)
//    are re-made at the same address by every launch (cudaGraphInstantiateFlagAutoFreeOnLaunch) and
//    freed with the graph; freeing one of them from JavaScript later only drops its handle;
//  - a buffer made before the capture and freed during it is freed after the capture instead (a free
//    recorded in the graph would run at every replay).
// An op that cannot be captured (host staging, the cuBLAS attention routes) fails the capture with a
// message; the caller ends it with mla_cuda_graph_abort and runs the step eagerly.
#include <cstring>
#include <unordered_set>
#include <vector>
#include "common.cuh"

using mla::ctx;

struct mla_cuda_graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  int64_t B = 0;
  int32_t* step = nullptr;            // device [2B]: the step's token ids, then its positions
  std::vector<void*> owned;           // cudaMalloc'd: scratch blocks, constant tables, the step buffer
  std::vector<void*> outputs;         // graph allocations live at the end of the step
  bool launched = false;
};

namespace mla {
struct StepCapture {
  mla_cuda_graph* g = nullptr;
  std::vector<int32_t> ids, pos;      // the capture step's values: what ops must be handed
  std::unordered_set<mla_cuda_buf*> made;     // buffers allocated during the capture, not yet freed
  std::vector<void*> deferred;        // pre-capture buffers freed during the capture
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  std::string failure;                // the first refusal, reported by end/abort
};

namespace {
StepCapture* active = nullptr;

mla_status owned_alloc(mla_cuda_graph* g, void** p, size_t bytes, const char* what) {
  // cudaMalloc, not the stream-ordered pool: it stays outside the graph (legal in relaxed capture mode).
  if (cudaMalloc(p, bytes ? bytes : 1) != cudaSuccess) {
    cudaGetLastError();
    *p = nullptr;
    return MLA_FAIL(MLA_ERR_MEMORY, std::string("out of GPU memory for a decode graph's ") + what + " (" + std::to_string(bytes) + " bytes)");
  }
  g->owned.push_back(*p);
  return MLA_OK;
}

void release(mla_cuda_graph* g) {
  for (void* p : g->outputs) cudaFree(p);
  if (g->exec) cudaGraphExecDestroy(g->exec);
  if (g->graph) cudaGraphDestroy(g->graph);
  for (void* p : g->owned) cudaFree(p);
  delete g;
}

// The capture's end for either outcome: what it recorded becomes the graph (or is dropped), its live
// buffers turn into handles that free nothing, and the frees it deferred run now.
void finish(StepCapture* cap, bool keep) {
  for (mla_cuda_buf* b : cap->made) {
    b->owner = false;
    if (keep) cap->g->outputs.push_back(b->ptr);
  }
  for (void* p : cap->deferred) cudaFreeAsync(p, ctx()->stream);
}
}  // namespace

StepCapture* capturing() { return active; }

mla_status refuse(const std::string& why) {
  if (active && active->failure.empty()) active->failure = why;
  return MLA_FAIL(MLA_ERR_UNSUPPORTED, "decode graph capture: " + why);
}

namespace {
const int32_t* step_values(const std::vector<int32_t>& mine, const int32_t* host, int64_t n, int64_t offset, const char* what) {
  StepCapture* c = active;
  if (!host || n != (int64_t)mine.size() || std::memcmp(host, mine.data(), n * sizeof(int32_t)) != 0) {
    refuse(std::string("an op was handed ") + what + " other than the step's");
    return nullptr;
  }
  return c->g->step + offset;
}
}  // namespace

const int32_t* step_ids(const int32_t* host, int64_t n) { return step_values(active->ids, host, n, 0, "token ids"); }
const int32_t* step_positions(const int32_t* host, int64_t n) { return step_values(active->pos, host, n, active->g->B, "positions"); }

const void* capture_constant(const void* data, size_t bytes, mla_status* st) {
  void* p = nullptr;
  *st = owned_alloc(active->g, &p, bytes, "constant table");
  if (*st) return nullptr;
  if (bytes && cudaMemcpy(p, data, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
    cudaGetLastError();
    *st = MLA_FAIL(MLA_ERR_INTERNAL, "decode graph capture: uploading a constant table failed");
    return nullptr;
  }
  return p;
}

void* capture_scratch(size_t bytes, mla_status* st) {
  StepCapture* c = active;
  *st = MLA_OK;
  if (bytes <= c->scratch_bytes) return c->scratch;
  // The smaller block stays owned: nodes recorded earlier in this capture read it.
  const size_t want = bytes < (1u << 20) ? (1u << 20) : bytes;
  if ((*st = owned_alloc(c->g, &c->scratch, want, "scratch"))) return nullptr;
  c->scratch_bytes = want;
  return c->scratch;
}

void capture_made(mla_cuda_buf* b) { active->made.insert(b); }

bool capture_free(mla_cuda_buf* b) {
  if (active->made.erase(b)) return false;  // made in the step: its free is part of the graph
  active->deferred.push_back(b->ptr);
  return true;
}
}  // namespace mla

using mla::active;

extern "C" mla_status mla_cuda_graph_begin(const int32_t* ids, const int32_t* pos, int64_t B) {
  NEED_CTX();
  MLA_CHECK(!active, "graph_begin: a capture is already open");
  MLA_CHECK(ids && pos && B > 0, "graph_begin: B ≥ 1 token ids and positions");
  auto* g = new mla_cuda_graph();
  g->B = B;
  if (mla_status st = mla::owned_alloc(g, (void**)&g->step, 2 * B * sizeof(int32_t), "step inputs")) {
    mla::release(g);
    return st;
  }
  // Pending eager work is not part of the graph; a failure here releases the graph (it leaked before).
  cudaError_t ready = cudaStreamSynchronize(ctx()->stream);
  if (ready == cudaSuccess) ready = cudaMemcpy(g->step, ids, B * sizeof(int32_t), cudaMemcpyHostToDevice);
  if (ready == cudaSuccess) ready = cudaMemcpy(g->step + B, pos, B * sizeof(int32_t), cudaMemcpyHostToDevice);
  if (ready != cudaSuccess) {
    cudaGetLastError();
    mla::release(g);
    return MLA_FAIL(MLA_ERR_INTERNAL, std::string("graph_begin: ") + cudaGetErrorString(ready));
  }
  auto* c = new mla::StepCapture();
  c->g = g;
  c->ids.assign(ids, ids + B);
  c->pos.assign(pos, pos + B);
  // Relaxed: the constant uploads and scratch blocks above call cudaMalloc/cudaMemcpy during the capture.
  cudaError_t e = cudaStreamBeginCapture(ctx()->stream, cudaStreamCaptureModeRelaxed);
  if (e != cudaSuccess) {
    cudaGetLastError();
    mla::release(g);
    delete c;
    return MLA_FAIL(MLA_ERR_INTERNAL, std::string("graph_begin: cudaStreamBeginCapture: ") + cudaGetErrorString(e));
  }
  active = c;
  return MLA_OK;
}

// Ends the capture and instantiates it; null with the reason in mla_last_error when anything in the
// step refused capture or CUDA rejects the graph (nothing is left open either way).
extern "C" mla_cuda_graph* mla_cuda_graph_end(void) {
  if (!ctx() || !active) {
    MLA_FAIL(MLA_ERR_ARGUMENT, "graph_end: no capture is open");
    return nullptr;
  }
  mla::StepCapture* c = active;
  active = nullptr;
  mla_cuda_graph* g = c->g;
  cudaError_t e = cudaStreamEndCapture(ctx()->stream, &g->graph);
  std::string why = c->failure;
  if (why.empty() && e != cudaSuccess) why = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
  if (why.empty()) {
    e = cudaGraphInstantiateWithFlags(&g->exec, g->graph, cudaGraphInstantiateFlagAutoFreeOnLaunch);
    if (e != cudaSuccess) why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
  }
  cudaGetLastError();
  mla::finish(c, why.empty());
  delete c;
  if (!why.empty()) {
    g->outputs.clear();  // never launched: its allocations were never made
    mla::release(g);
    MLA_FAIL(MLA_ERR_UNSUPPORTED, "decode graph capture: " + why);
    return nullptr;
  }
  return g;
}

// Ends a capture an op failed inside (the caller's error path); a no-op when none is open.
extern "C" void mla_cuda_graph_abort(void) {
  if (!ctx() || !active) return;
  active->failure = active->failure.empty() ? "aborted" : active->failure;  // never instantiate it
  mla_cuda_graph_end();
}

// One step: the ids and positions [B] into the graph's input buffer, then the replay, in stream order.
extern "C" mla_status mla_cuda_graph_launch(mla_cuda_graph* g, const int32_t* ids, const int32_t* pos, int64_t B) {
  NEED_CTX();
  MLA_CHECK(g && ids && pos && B == g->B, "graph_launch: the graph was captured for a batch of " + std::to_string(g ? g->B : 0) + ", not " + std::to_string(B));
  MLA_CHECK(!active, "graph_launch: a capture is open");
  if (mla_status st = mla::stage_to_device(ids, B * sizeof(int32_t), g->step)) return st;
  if (mla_status st = mla::stage_to_device(pos, B * sizeof(int32_t), g->step + B)) return st;
  CUDA_TRY(cudaGraphLaunch(g->exec, ctx()->stream));
  g->launched = true;
  return MLA_OK;
}

extern "C" void mla_cuda_graph_destroy(mla_cuda_graph* g) {
  if (!g || !ctx()) return;
  cudaStreamSynchronize(ctx()->stream);
  // The step's live allocations exist only once a launch made them.
  if (!g->launched) g->outputs.clear();
  mla::release(g);
}
