// Causal attention forward and backward through cuDNN's fused flash attention (the SDPA graph of the
// cuDNN frontend, vendored header-only under native/third_party/cudnn_frontend), the route PyTorch's
// SDPA takes on Hopper. Built only when cuDNN's header and library are found at build time
// (scripts/build-native.mjs defines MLA_WITH_CUDNN); otherwise every entry here says "not taken" and
// the fused mma.sync kernels of attention_mma.cu run instead.
//
// Layouts are ours, given to cuDNN as strides: q[B·T,H,Dh] is cuDNN's [B,H,T,Dh] with strides
// (T·H·Dh, Dh, H·Dh, 1), likewise k, v, o, dout; the statistics (natural-log log-sum-exp of the scaled
// scores) are [B·H, T], the layout of the mma route's lse, but in another base: only this route reads
// what it saved. cuDNN reads and writes bf16: o, dq, dk, dv are widened to float32 for the callers.
//
// Graphs are built once per problem (shape, scale, causal alignment) and cached; a problem cuDNN does
// not support (a head dim it lacks, a window, a query offset other than 0 or S − T) is remembered as
// such, and the caller takes the mma route.
#include "common.cuh"

#ifdef MLA_WITH_CUDNN
#include <cudnn.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <cudnn_frontend.h>

namespace fe = cudnn_frontend;
using mla::ctx;

namespace {
enum Uid : int64_t { Q = 1, K, V, O, STATS, DO, DQ, DK, DV };

// What identifies a graph: the problem, and whether it is the forward or the backward.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t, int64_t, bool, bool>;
struct Cached {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN does not take this problem
  int64_t workspace = 0;
  std::string why;
  std::string label;  // the problem, for the trace
};

struct State {
  cudnnHandle_t handle = nullptr;
  std::string init_error;
  std::map<Key, Cached> graphs;
  std::mutex lock;
};
State& state() {
  static State s;
  return s;
}

// MHA2MLA_CUDNN_TRACE=1: each graph's plan (engine) name and workspace when built, and each execute's
// device time (CUDA events, synchronizing: a diagnosis aid, it slows the run), on stderr.
bool tracing() {
  static const bool on = [] {
    const char* e = getenv("MHA2MLA_CUDNN_TRACE");
    return e && *e && strcmp(e, "0") != 0;
  }();
  return on;
}

// The backward is deterministic unless MHA2MLA_CUDNN_DETERMINISTIC=0 (faster where cuDNN's atomic dQ
// path is; a rerun then no longer gives the same bits).
bool deterministic() {
  const char* e = getenv("MHA2MLA_CUDNN_DETERMINISTIC");
  return !(e && strcmp(e, "0") == 0);
}

std::vector<int64_t> strides(int64_t T, int64_t H, int64_t D) { return {T * H * D, D, H * D, 1}; }

std::shared_ptr<fe::graph::Tensor_attributes> input(fe::graph::Graph& g, const char* name, int64_t uid, int64_t B, int64_t H, int64_t T, int64_t D) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim({B, H, T, D}).set_stride(strides(T, H, D)));
}

struct Problem {
  int64_t B, T, S, H, Hkv, Dh, Dv;
  float scale;
  int64_t off;
};

std::string describe(const Problem& p, bool backward) {
  char b[200];
  snprintf(b, sizeof b, "%s B=%lld T=%lld S=%lld H=%lld Hkv=%lld Dh=%lld Dv=%lld off=%lld", backward ? "backward" : "forward", (long long)p.B, (long long)p.T, (long long)p.S, (long long)p.H, (long long)p.Hkv, (long long)p.Dh, (long long)p.Dv, (long long)p.off);
  return b;
}

// Query row t sits at key position t + off and sees keys ≤ t + off: cuDNN's causal band with its
// diagonal at the top left (off = 0) or the bottom right (off = S − T).
fe::DiagonalAlignment_t alignment(const Problem& p) { return p.off == 0 ? fe::DiagonalAlignment_t::TOP_LEFT : fe::DiagonalAlignment_t::BOTTOM_RIGHT; }

std::shared_ptr<fe::graph::Graph> forward_graph(const Problem& p, bool stats) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = input(*g, "Q", Q, p.B, p.H, p.T, p.Dh);
  auto k = input(*g, "K", K, p.B, p.Hkv, p.S, p.Dh);
  auto v = input(*g, "V", V, p.B, p.Hkv, p.S, p.Dv);
  auto opts = fe::graph::SDPA_attributes().set_name("attention").set_generate_stats(stats).set_attn_scale(p.scale);
  opts.set_diagonal_alignment(alignment(p)).set_diagonal_band_right_bound(0);
  auto [o, st] = g->sdpa(q, k, v, opts);
  o->set_output(true).set_uid(O).set_dim({p.B, p.H, p.T, p.Dv}).set_stride(strides(p.T, p.H, p.Dv));
  if (stats) st->set_output(true).set_uid(STATS).set_data_type(fe::DataType_t::FLOAT).set_dim({p.B, p.H, p.T, 1}).set_stride({p.H * p.T, p.T, 1, 1});
  return g;
}

std::shared_ptr<fe::graph::Graph> backward_graph(const Problem& p) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = input(*g, "Q", Q, p.B, p.H, p.T, p.Dh);
  auto k = input(*g, "K", K, p.B, p.Hkv, p.S, p.Dh);
  auto v = input(*g, "V", V, p.B, p.Hkv, p.S, p.Dv);
  auto o = input(*g, "O", O, p.B, p.H, p.T, p.Dv);
  auto dout = input(*g, "dO", DO, p.B, p.H, p.T, p.Dv);
  auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("Stats").set_uid(STATS).set_dim({p.B, p.H, p.T, 1}).set_stride({p.H * p.T, p.T, 1, 1}).set_data_type(fe::DataType_t::FLOAT));
  auto opts = fe::graph::SDPA_backward_attributes().set_name("attention_backward").set_attn_scale(p.scale).set_deterministic_algorithm(deterministic());
  opts.set_diagonal_alignment(alignment(p)).set_diagonal_band_right_bound(0);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, opts);
  dq->set_output(true).set_uid(DQ).set_dim({p.B, p.H, p.T, p.Dh}).set_stride(strides(p.T, p.H, p.Dh));
  dk->set_output(true).set_uid(DK).set_dim({p.B, p.Hkv, p.S, p.Dh}).set_stride(strides(p.S, p.Hkv, p.Dh));
  dv->set_output(true).set_uid(DV).set_dim({p.B, p.Hkv, p.S, p.Dv}).set_stride(strides(p.S, p.Hkv, p.Dv));
  return g;
}

cudnnHandle_t handle(std::string* why) {
  State& s = state();
  if (!s.handle && s.init_error.empty()) {
    const cudnnStatus_t st = cudnnCreate(&s.handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      s.handle = nullptr;
      s.init_error = std::string("cudnnCreate: ") + cudnnGetErrorString(st);
    }
  }
  if (!s.handle) {
    *why = s.init_error;
    return nullptr;
  }
  cudnnSetStream(s.handle, ctx()->stream);
  return s.handle;
}

// The cached graph of a problem, built on first use; entry.graph is null when cuDNN refuses it.
const Cached& graph_of(const Problem& p, bool backward, bool stats) {
  State& s = state();
  std::lock_guard<std::mutex> guard(s.lock);
  uint32_t scale_bits;
  memcpy(&scale_bits, &p.scale, sizeof scale_bits);
  const Key key{p.B, p.T, p.S, p.H, p.Hkv, p.Dh, p.Dv, scale_bits, p.off, backward, stats};
  auto it = s.graphs.find(key);
  if (it != s.graphs.end()) return it->second;
  Cached c;
  std::string why;
  cudnnHandle_t h = handle(&why);
  if (!h) {
    c.why = why;
  } else {
    try {
      auto g = backward ? backward_graph(p) : forward_graph(p, stats);
      fe::error_t built = g->build(h, {fe::HeurMode_t::A});
      fe::error_t sized = built.is_good() ? g->get_workspace_size(c.workspace) : built;
      if (sized.is_good()) c.graph = g;
      else c.why = sized.get_message();
      c.label = describe(p, backward);
      if (tracing()) {
        std::string plan = "?";
        if (c.graph && !c.graph->get_plan_name(plan).is_good()) plan = "?";
        fprintf(stderr, "[cudnn] built %s%s: plan %s, workspace %lld B%s%s\n", c.label.c_str(), stats ? "" : " (no stats)", plan.c_str(), (long long)c.workspace, c.graph ? "" : ", refused: ", c.why.c_str());
      }
    } catch (const std::exception& ex) {
      c.why = ex.what();
    }
  }
  return s.graphs.emplace(key, std::move(c)).first->second;
}

mla_status execute(const Cached& c, std::unordered_map<int64_t, void*>& pack) {
  std::string why;
  cudnnHandle_t h = handle(&why);
  if (!h) return MLA_FAIL(MLA_ERR_INTERNAL, "cuDNN attention: " + why);
  void* ws = nullptr;
  if (c.workspace > 0) {
    mla_status st;
    ws = mla::scratch((size_t)c.workspace, &st);
    if (!ws) return st;
  }
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  if (tracing()) {
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    cudaEventRecord(t0, ctx()->stream);
  }
  fe::error_t e = c.graph->execute(h, pack, ws);
  if (t0) {
    cudaEventRecord(t1, ctx()->stream);
    cudaEventSynchronize(t1);
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    fprintf(stderr, "[cudnn] %s: %.3f ms\n", c.label.c_str(), ms);
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
  }
  if (!e.is_good()) return MLA_FAIL(MLA_ERR_INTERNAL, "cuDNN attention: " + e.get_message());
  return MLA_OK;
}

bool expressible(const Problem& p, int64_t window) { return window <= 0 && p.T > 0 && p.S > 0 && (p.off == 0 || p.off == p.S - p.T) && p.off >= 0; }
}  // namespace

namespace mla {
bool cudnn_available() {
  std::string why;
  return ctx() && handle(&why) != nullptr;
}

bool use_cudnn(bool bf16, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, bool stats) {
  const AttentionRoute r = attention_route();
  if (!bf16 || (r != AttentionRoute::Cudnn && r != AttentionRoute::Auto)) return false;
  // The default route: cuDNN for training (its forward + backward beats ours); our fused kernels for
  // inference forwards they take. cuDNN's forward alone is faster per call at 128/128 (0.26–0.30 ms
  // against 0.91 at B 4, T 2048, 32 heads), but as eval's default at the llama2-7b shape it was not
  // (seventeenth session: 105.7k and 45.4k tokens/s in two runs against the fused kernels' 113.5k).
  if (r == AttentionRoute::Auto && !stats && attention_mma_dims(Dh, Dv)) return false;
  const Problem p{B, T, S, H, Hkv, Dh, Dv, scale, off};
  if (!expressible(p, window)) return false;
  return graph_of(p, false, stats).graph != nullptr;
}

mla_status cudnn_attention_forward(const void* q, const void* k, const void* v, float* o, __nv_bfloat16* o_bf16, float* stats, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off) {
  const Problem p{B, T, S, H, Hkv, Dh, Dv, scale, off};
  const Cached& c = graph_of(p, false, stats != nullptr);
  if (!c.graph) return MLA_FAIL(MLA_ERR_INTERNAL, "cuDNN attention forward not available for this problem: " + c.why);
  mla::DevMem ob;  // cuDNN's bf16 output before it is widened, where the caller keeps no bf16 copy
  const int64_t n = B * T * H * Dv;
  if (!o_bf16) {
    if (mla_status e = mla::dev_alloc(ob, sizeof(__nv_bfloat16) * n, "cuDNN attention staging")) return e;
    o_bf16 = static_cast<__nv_bfloat16*>(ob.p);
  }
  std::unordered_map<int64_t, void*> pack{{Q, (void*)q}, {K, (void*)k}, {V, (void*)v}, {O, o_bf16}};
  if (stats) pack[STATS] = stats;
  if (mla_status e = execute(c, pack)) return e;
  return widen_bf16(o_bf16, o, n);
}

mla_status cudnn_attention_backward(const void* q, const void* k, const void* v, const void* dout, const float* o, const __nv_bfloat16* o_bf16, const float* saved_stats, float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, bool* taken) {
  *taken = false;
  const Problem p{B, T, S, H, Hkv, Dh, Dv, scale, off};
  const Cached& c = graph_of(p, true, true);
  if (!c.graph) return MLA_OK;  // the caller takes the mma route
  const int64_t nq = B * T * H * Dh, nk = B * S * Hkv * Dh, nv = B * S * Hkv * Dv, no = B * T * H * Dv;
  mla::DevMem st;
  // bf16 o (the caller's copy, or narrowed from the forward's float32 output, exactly: it was widened
  // from bf16), the statistics when none were saved, and the three bf16 gradients.
  const size_t bf = sizeof(__nv_bfloat16);
  const size_t stats_bytes = saved_stats ? 0 : sizeof(float) * B * H * T;
  const int64_t own_o = saved_stats && o_bf16 ? 0 : no;
  if (mla_status e = mla::dev_alloc(st, bf * (own_o + nq + nk + nv) + stats_bytes + 256, "cuDNN attention staging")) return e;
  auto* ob = static_cast<__nv_bfloat16*>(st.p);
  const __nv_bfloat16* o_in = ob;
  auto* dqb = ob + own_o;
  auto* dkb = dqb + nq;
  auto* dvb = dkb + nk;
  float* stats = const_cast<float*>(saved_stats);
  if (saved_stats && o_bf16) {
    o_in = o_bf16;
  } else if (saved_stats && o) {
    if (mla_status e = narrow_f32(o, ob, no)) return e;
  } else {
    // No saved forward: run it again for o and the statistics (aligned past the bf16 tensors).
    stats = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(dvb + nv) + 255) & ~uintptr_t(255));
    const Cached& f = graph_of(p, false, true);
    if (!f.graph) return MLA_OK;
    std::unordered_map<int64_t, void*> fp{{Q, (void*)q}, {K, (void*)k}, {V, (void*)v}, {O, ob}, {STATS, stats}};
    if (mla_status e = execute(f, fp)) return e;
  }
  std::unordered_map<int64_t, void*> pack{{Q, (void*)q}, {K, (void*)k}, {V, (void*)v}, {O, (void*)o_in}, {DO, (void*)dout}, {STATS, stats}, {DQ, dqb}, {DK, dkb}, {DV, dvb}};
  if (mla_status e = execute(c, pack)) return e;
  if (mla_status e = widen_bf16(dqb, dq, nq)) return e;
  if (mla_status e = widen_bf16(dkb, dk, nk)) return e;
  if (mla_status e = widen_bf16(dvb, dv, nv)) return e;
  *taken = true;
  return MLA_OK;
}
}  // namespace mla

extern "C" int32_t mla_cuda_cudnn_version(void) { return mla::cudnn_available() ? (int32_t)cudnnGetVersion() : 0; }

#else  // built without cuDNN

extern "C" int32_t mla_cuda_cudnn_version(void) { return 0; }

namespace mla {
bool cudnn_available() { return false; }
bool use_cudnn(bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, int64_t, bool) { return false; }
mla_status cudnn_attention_forward(const void*, const void*, const void*, float*, __nv_bfloat16*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t) {
  return MLA_FAIL(MLA_ERR_UNAVAILABLE, "this build has no cuDNN (rebuild with cuDNN's header and library installed)");
}
mla_status cudnn_attention_backward(const void*, const void*, const void*, const void*, const float*, const __nv_bfloat16*, const float*, float*, float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, bool* taken) {
  *taken = false;
  return MLA_OK;
}
}  // namespace mla

#endif
