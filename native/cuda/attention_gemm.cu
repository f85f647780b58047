// Attention of many query rows (prefill, evaluation, training) in float32, and in bf16 where the fused
// kernels of attention_mma.cu do not take the head dims, as cuBLAS GEMMs over chunks of
// queries, for B sequences of equal length at once: the scores of every (sequence, head) of a chunk
// come from one batched GEMM, a softmax kernel normalizes them, a second batched GEMM applies them to
// the values. Each chunk reads only the keys its queries can see, so causal attention does a bit more
// than half the work of a full product. With `bf16` the GEMM inputs (q, k, v, the probabilities and
// their gradients) are rounded to bf16 and run on tensor cores; scores, softmax and every
// accumulation stay float32 (PyTorch autocast does the same).
//
// Shapes: q[B·T,H,Dh], k[B·S,Hkv,Dh], v[B·S,Hkv,Dv], o[B·T,H,Dv]; query head h uses KV head h / (H/Hkv).
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "common.cuh"

using mla::ctx;
using mla::use_mma;

namespace {
// Row r of scores[B·H, n, Sc] (keys klo … klo+Sc−1 of its sequence): softmax over the keys query
// t0 + (r mod n) may see, 0 elsewhere; written in place when `keep` (float32 callers and the
// backward, which needs P), and as bf16 to pb when set (the forward in bf16 writes only that).
__global__ void k_softmax_chunk(float* scores, __nv_bfloat16* pb, bool keep, int64_t n, int64_t Sc, float scale, int64_t qpos0, int64_t klo, int64_t S, int64_t window) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x % n;
  float* row = scores + (int64_t)blockIdx.x * Sc;
  const int64_t qpos = qpos0 + t;
  const int64_t hi = min(min(S - 1, qpos), klo + Sc - 1) - klo;
  const int64_t lo = max((window > 0 ? max((int64_t)0, qpos - window + 1) : 0) - klo, (int64_t)0);
  if (keep) {
    softmax_row(row, Sc, scale, lo, hi, red);
    if (pb) {
      __nv_bfloat16* out = pb + (int64_t)blockIdx.x * Sc;
      for (int64_t s = threadIdx.x; s < Sc; s += blockDim.x) out[s] = __float2bfloat16(row[s]);  // each thread reads what it wrote
    }
    return;
  }
  float mx = -FLT_MAX;
  for (int64_t s = lo + threadIdx.x; s <= hi; s += blockDim.x) mx = fmaxf(mx, row[s] * scale);
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t s = lo + threadIdx.x; s <= hi; s += blockDim.x) z += expf(row[s] * scale - mx);
  z = block_reduce<false>(z, red);
  const float inv = z > 0 ? 1.0f / z : 0.0f;
  __nv_bfloat16* out = pb + (int64_t)blockIdx.x * Sc;
  for (int64_t s = threadIdx.x; s < Sc; s += blockDim.x) out[s] = __float2bfloat16((s >= lo && s <= hi) ? expf(row[s] * scale - mx) * inv : 0.0f);
}

// In place on one row: ds = scale · p ⊙ (dp − Σ p·dp), the gradient of the raw scores; as bf16 to dsb when set.
__global__ void k_softmax_backward_chunk(const float* p, float* dp, __nv_bfloat16* dsb, int64_t Sc, float scale) {
  __shared__ float red[32];
  const float* pr = p + (int64_t)blockIdx.x * Sc;
  float* dr = dp + (int64_t)blockIdx.x * Sc;
  float dot = 0;
  for (int64_t s = threadIdx.x; s < Sc; s += blockDim.x) dot += pr[s] * dr[s];
  dot = block_reduce<false>(dot, red);
  for (int64_t s = threadIdx.x; s < Sc; s += blockDim.x) {
    const float ds = scale * pr[s] * (dr[s] - dot);
    dr[s] = ds;
    if (dsb) dsb[(int64_t)blockIdx.x * Sc + s] = __float2bfloat16(ds);
  }
}

// Queries per chunk: 256 (so causal chunks skip the keys they cannot see) or fewer, such that
// `buffers` float32 score arrays [B·H, Tq, S] stay within 1 GiB.
int64_t queries_per_chunk(int64_t B, int64_t T, int64_t H, int64_t S, int64_t buffers) {
  int64_t Tq = ((int64_t)1 << 28) / (buffers * B * H * (S > 0 ? S : 1));
  Tq = Tq >= 64 ? Tq / 64 * 64 : (Tq > 0 ? Tq : 1);
  // MHA2MLA_CUDA_ATTENTION_CHUNK overrides the cap (benchmarks compare launches saved against causal work wasted).
  static const int64_t cap = getenv("MHA2MLA_CUDA_ATTENTION_CHUNK") ? atoll(getenv("MHA2MLA_CUDA_ATTENTION_CHUNK")) : 256;
  if (Tq > cap && cap > 0) Tq = cap;
  return Tq < T ? Tq : T;
}

// The keys [klo, khi] that queries t0 … t0+n−1 (positions + off) can see; khi < klo when none.
void chunk_keys(int64_t t0, int64_t n, int64_t S, int64_t off, int64_t window, int64_t* klo, int64_t* khi) {
  *khi = min(S - 1, t0 + n - 1 + off);
  *klo = window > 0 ? max((int64_t)0, t0 + off - window + 1) : 0;
}

// One batched GEMM C_i = op(A_i)·op(B_i) + beta·C_i (column-major, cuBLAS conventions) over pointer
// lists built on the host; A and B of type `ab` (f32 or bf16), C float32, float32 accumulation.
struct Batch {
  std::vector<const void*> a, b;
  std::vector<void*> c;
  void add(const void* pa, const void* pb, void* pc) {
    a.push_back(pa);
    b.push_back(pb);
    c.push_back(pc);
  }
};

mla_status run_batch(const Batch& x, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, float beta, cudaDataType_t ab) {
  const size_t count = x.c.size();
  if (count == 0 || m == 0 || n == 0) return MLA_OK;
  if (k == 0) {
    // A zero head dim (C = beta·C): the leading dims of the empty A, B must still be valid for cuBLAS.
    lda = max(lda, ta == CUBLAS_OP_N ? m : (int64_t)1);
    ldb = max(ldb, tb == CUBLAS_OP_N ? (int64_t)1 : n);
  }
  std::vector<const void*> all(3 * count);
  for (size_t i = 0; i < count; i++) {
    all[i] = x.a[i];
    all[count + i] = x.b[i];
    all[2 * count + i] = x.c[i];
  }
  mla::DevMem ptrs;
  if (mla_status e_ = mla::dev_alloc(ptrs, sizeof(void*) * 3 * count, "attention scratch")) return e_;
  if (mla_status e = mla::stage_to_device(all.data(), sizeof(void*) * 3 * count, ptrs.p)) return e;
  const void** d = (const void**)ptrs.p;
  const float one = 1;
  CUBLAS_TRY(cublasGemmBatchedEx(ctx()->blas, ta, tb, (int)m, (int)n, (int)k, &one, d, ab, (int)lda, d + count, ab, (int)ldb, &beta, (void* const*)(d + 2 * count), CUDA_R_32F, (int)ldc, (int)count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return MLA_OK;
}

// The GEMM inputs: the f32 tensors themselves, or bf16 copies made once per call.
struct Inputs {
  const char* q;
  const char* k;
  const char* v;
  const char* dout;
  size_t es;  // element size of the inputs
  cudaDataType_t type;
  mla::DevMem mem;
};

// The GEMM inputs: the float32 tensors as they are, or bf16 (the caller's kept copies where given,
// else rounded here into scratch).
mla_status prepare_inputs(Inputs& in, const float* q, const float* k, const float* v, const float* dout, int64_t nq, int64_t nk, int64_t nv, int64_t nd, bool bf16, const mla::AttentionBf16& kept) {
  if (!bf16) {
    in = {(const char*)q, (const char*)k, (const char*)v, (const char*)dout, sizeof(float), CUDA_R_32F, {}};
    return MLA_OK;
  }
  const float* src[4] = {q, k, v, dout};
  const __nv_bfloat16* copies[4] = {kept.q, kept.k, kept.v, nullptr};
  const int64_t len[4] = {nq, nk, nv, nd};
  const char** dst[4] = {&in.q, &in.k, &in.v, &in.dout};
  int64_t rounded = 0;
  for (int i = 0; i < 4; i++) rounded += src[i] && !copies[i] ? len[i] : 0;
  if (rounded)
    if (mla_status e_ = mla::dev_alloc(in.mem, sizeof(__nv_bfloat16) * rounded, "attention scratch")) return e_;
  auto* base = (__nv_bfloat16*)in.mem.p;
  int64_t at = 0;
  for (int i = 0; i < 4; i++) {
    if (copies[i]) {
      *dst[i] = (const char*)copies[i];
      continue;
    }
    *dst[i] = src[i] ? (const char*)(base + at) : nullptr;
    if (src[i])
      if (mla_status e = mla::narrow_f32(src[i], base + at, len[i])) return e;
    at += src[i] ? len[i] : 0;
  }
  in.es = sizeof(__nv_bfloat16);
  in.type = CUDA_R_16BF;
  return MLA_OK;
}
}  // namespace

namespace mla {
mla_status kept_bf16(AttentionBf16& kept, const mla_cuda_buf* q, const mla_cuda_buf* k, const mla_cuda_buf* v, const mla_cuda_buf* o, int64_t nq, int64_t nk, int64_t nv, int64_t no, const char* op) {
  auto ok = [](const mla_cuda_buf* b, int64_t n) { return !b || (b->dtype == MLA_BF16 && b->n == n); };
  MLA_CHECK(ok(q, nq) && ok(k, nk) && ok(v, nv) && ok(o, no), std::string(op) + ": the kept copies of q, k, v, o must be bf16 buffers of their tensors' sizes, or null");
  auto p = [](const mla_cuda_buf* b) { return b ? static_cast<__nv_bfloat16*>(b->ptr) : nullptr; };
  kept = {p(q), p(k), p(v), p(o)};
  return MLA_OK;
}

// The forward on the route chosen, its output float32 only.
static mla_status attention_gemm_f32_out(const float* q, const float* k, const float* v, float* o, float* lse, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, bool bf16, bool cudnn, const AttentionBf16& kept);

mla_status attention_gemm(const float* q, const float* k, const float* v, float* o, float* lse, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, bool bf16, bool cudnn, const AttentionBf16& kept) {
  if (mla_status e = attention_gemm_f32_out(q, k, v, o, lse, B, T, S, H, Hkv, Dh, Dv, scale, off, window, bf16, cudnn, kept)) return e;
  // cuDNN wrote kept.o itself; the other routes' float32 output is rounded into it.
  return kept.o && !cudnn ? narrow_f32(o, kept.o, B * T * H * Dv) : MLA_OK;
}

static mla_status attention_gemm_f32_out(const float* q, const float* k, const float* v, float* o, float* lse, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, bool bf16, bool cudnn, const AttentionBf16& kept) {
  const int64_t group = H / Hkv;
  Inputs in;
  if (mla_status e = prepare_inputs(in, q, k, v, nullptr, B * T * H * Dh, B * S * Hkv * Dh, B * S * Hkv * Dv, 0, bf16, kept)) return e;
  if (cudnn) return cudnn_attention_forward(in.q, in.k, in.v, o, kept.o, lse, B, T, S, H, Hkv, Dh, Dv, scale, off);
  if (use_mma(bf16, Dh, Dv)) return attention_mma(in.q, in.k, in.v, o, lse, B, T, S, H, Hkv, Dh, Dv, scale, off, window);
  const int64_t Tq = queries_per_chunk(B, T, H, S, 1);
  mla::DevMem sc, pb;
  if (mla_status e_ = mla::dev_alloc(sc, sizeof(float) * B * H * Tq * S, "attention scratch")) return e_;
  if (bf16) {
    if (mla_status e_ = mla::dev_alloc(pb, sizeof(__nv_bfloat16) * B * H * Tq * S, "attention scratch")) return e_;
  }
  float* scores = (float*)sc.p;
  const size_t es = in.es;
  for (int64_t t0 = 0; t0 < T; t0 += Tq) {
    const int64_t n = min(Tq, T - t0);
    int64_t klo, khi;
    chunk_keys(t0, n, S, off, window, &klo, &khi);
    if (khi < klo) {  // no visible key for any query of the chunk
      for (int64_t b = 0; b < B; b++) CUDA_TRY(cudaMemsetAsync(o + (b * T + t0) * H * Dv, 0, sizeof(float) * n * H * Dv, ctx()->stream));
      continue;
    }
    const int64_t Sc = khi - klo + 1;
    // scores[b,h][t, s] = q[b, t0+t, h, :]·k[b, klo+s, g, :]: column-major [Sc × n] blocks.
    Batch s1, s2;
    const char* pin = bf16 ? (const char*)pb.p : (const char*)scores;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / group, i = b * H + h;
        s1.add(in.k + ((b * S + klo) * Hkv * Dh + g * Dh) * es, in.q + ((b * T + t0) * H * Dh + h * Dh) * es, scores + i * n * Sc);
        // o[b, t0+t, h, :] = Σ_s p[b,h][t, s]·v[b, klo+s, g, :]: column-major [Dv × n], ld H·Dv.
        s2.add(in.v + ((b * S + klo) * Hkv * Dv + g * Dv) * es, pin + i * n * Sc * es, o + (b * T + t0) * H * Dv + h * Dv);
      }
    if (mla_status e = run_batch(s1, CUBLAS_OP_T, CUBLAS_OP_N, Sc, n, Dh, Hkv * Dh, H * Dh, Sc, 0.0f, in.type)) return e;
    k_softmax_chunk<<<(unsigned)(B * H * n), 256, 0, ctx()->stream>>>(scores, bf16 ? (__nv_bfloat16*)pb.p : nullptr, !bf16, n, Sc, scale, t0 + off, klo, S, window);
    KERNEL_CHECK();
    if (mla_status e = run_batch(s2, CUBLAS_OP_N, CUBLAS_OP_N, Dv, n, Sc, Hkv * Dv, Sc, H * Dv, 0.0f, in.type)) return e;
  }
  return MLA_OK;
}
}  // namespace mla

// Gradients of the chunked GEMM attention: the probabilities are recomputed chunk by chunk.
// o and lse: the forward's output and the statistics it saved (mla_cuda_attention's `saved`, passed
// back as saved_kind: 1 the fused kernels', 2 cuDNN's), or null; the route that made them then skips
// recomputing them, another route ignores them.
// q16, k16, v16, o16: the caller's bf16 copies of q, k, v and the forward's o (mla_cuda_attention's),
// each null or bf16 of its tensor's size; read instead of rounding the float32 tensors again.
extern "C" mla_status mla_cuda_attention_backward(const mla_cuda_buf* qb, const mla_cuda_buf* kb, const mla_cuda_buf* vb, const mla_cuda_buf* dob, mla_cuda_buf* dqb, mla_cuda_buf* dkb, mla_cuda_buf* dvb, int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t Dh, int64_t Dv, float scale, int64_t off, int64_t window, int32_t bf16, const mla_cuda_buf* ob, const mla_cuda_buf* lseb, int32_t saved_kind, const mla_cuda_buf* q16, const mla_cuda_buf* k16, const mla_cuda_buf* v16, const mla_cuda_buf* o16) {
  NEED_CTX();
  auto f32 = [](const mla_cuda_buf* b, int64_t n) { return b && b->dtype == MLA_F32 && b->n == n; };
  MLA_CHECK(B >= 1 && f32(qb, B * T * H * Dh) && f32(kb, B * S * Hkv * Dh) && f32(vb, B * S * Hkv * Dv) && f32(dob, B * T * H * Dv) && f32(dqb, B * T * H * Dh) && f32(dkb, B * S * Hkv * Dh) && f32(dvb, B * S * Hkv * Dv),
            "attention_backward: f32 buffers q[B·T,H,Dh], k[B·S,Hkv,Dh], v[B·S,Hkv,Dv], dout[B·T,H,Dv] and gradients of the same shapes");
  MLA_CHECK(Hkv > 0 && H % Hkv == 0, "attention_backward: H must be a multiple of Hkv");
  MLA_CHECK(!ob == !lseb && (!ob || (f32(ob, B * T * H * Dv) && f32(lseb, B * H * T))), "attention_backward: o[B·T,H,Dv] and lse[B·H·T] f32, both or neither");
  mla::AttentionBf16 kept;
  if (mla_status e = mla::kept_bf16(kept, q16, k16, v16, o16, B * T * H * Dh, B * S * Hkv * Dh, B * S * Hkv * Dv, B * T * H * Dv, "attention_backward")) return e;
  float* dq = (float*)dqb->ptr;
  float* dk = (float*)dkb->ptr;
  float* dv = (float*)dvb->ptr;
  cudaStream_t stream = ctx()->stream;
  const int64_t group = H / Hkv;
  Inputs in;
  if (T > 0 && S > 0) {
    if (mla_status e = prepare_inputs(in, (const float*)qb->ptr, (const float*)kb->ptr, (const float*)vb->ptr, (const float*)dob->ptr, B * T * H * Dh, B * S * Hkv * Dh, B * S * Hkv * Dv, B * T * H * Dv, bf16 != 0, kept)) return e;
    if (mla::use_cudnn(bf16 != 0, B, T, S, H, Hkv, Dh, Dv, scale, off, window, true)) {
      const bool mine = ob && saved_kind == 2;
      bool taken = false;
      if (mla_status e = mla::cudnn_attention_backward(in.q, in.k, in.v, in.dout, mine ? (const float*)ob->ptr : nullptr, mine ? kept.o : nullptr, mine ? (const float*)lseb->ptr : nullptr, dq, dk, dv, B, T, S, H, Hkv, Dh, Dv, scale, off, &taken)) return e;
      if (taken) return MLA_OK;  // cuDNN wrote every gradient
    }
  }
  // The other routes accumulate into zeroed gradients.
  CUDA_TRY(cudaMemsetAsync(dq, 0, sizeof(float) * B * T * H * Dh, stream));
  CUDA_TRY(cudaMemsetAsync(dk, 0, sizeof(float) * B * S * Hkv * Dh, stream));
  CUDA_TRY(cudaMemsetAsync(dv, 0, sizeof(float) * B * S * Hkv * Dv, stream));
  if (T == 0 || S == 0) return MLA_OK;
  if (saved_kind != 1) ob = lseb = nullptr;  // statistics of another route: recompute
  if (use_mma(bf16 != 0, Dh, Dv)) {
    mla::DevMem stats;  // the row log-sum-exp and δ = rowsum(dout ∘ o), [B·H, T] each
    if (mla_status e_ = mla::dev_alloc(stats, sizeof(float) * 2 * B * H * T, "attention scratch")) return e_;
    float* lse = (float*)stats.p;
    return mla::attention_mma_backward(in.q, in.k, in.v, in.dout, (const float*)dob->ptr, ob ? (const float*)ob->ptr : nullptr, lseb ? (const float*)lseb->ptr : nullptr, lse, lse + B * H * T, dq, dk, dv, B, T, S, H, Hkv, Dh, Dv, scale, off, window);
  }
  const size_t es = in.es;
  const int64_t Tq = queries_per_chunk(B, T, H, S, 2);  // probabilities and their gradient
  mla::DevMem pm, lowp;
  if (mla_status e_ = mla::dev_alloc(pm, sizeof(float) * 2 * B * H * Tq * S, "attention scratch")) return e_;
  if (bf16) {
    if (mla_status e_ = mla::dev_alloc(lowp, sizeof(__nv_bfloat16) * 2 * B * H * Tq * S, "attention scratch")) return e_;
  }
  float* P = (float*)pm.p;
  float* dP = P + B * H * Tq * S;
  __nv_bfloat16* Pb = bf16 ? (__nv_bfloat16*)lowp.p : nullptr;
  __nv_bfloat16* dSb = bf16 ? Pb + B * H * Tq * S : nullptr;
  for (int64_t t0 = 0; t0 < T; t0 += Tq) {
    const int64_t n = min(Tq, T - t0);
    int64_t klo, khi;
    chunk_keys(t0, n, S, off, window, &klo, &khi);
    if (khi < klo) continue;  // no visible key: every gradient of the chunk is 0
    const int64_t Sc = khi - klo + 1;
    const char* pIn = bf16 ? (const char*)Pb : (const char*)P;
    const char* dsIn = bf16 ? (const char*)dSb : (const char*)dP;
    Batch scores, dprobs, dqs;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / group, i = b * H + h;
        const int64_t krow = (b * S + klo) * Hkv, qrow = (b * T + t0) * H;
        scores.add(in.k + (krow * Dh + g * Dh) * es, in.q + (qrow * Dh + h * Dh) * es, P + i * n * Sc);
        dprobs.add(in.v + (krow * Dv + g * Dv) * es, in.dout + (qrow * Dv + h * Dv) * es, dP + i * n * Sc);
        // dq[b, t0+t, h, :] = Σ_s dS[b,h][t, s]·k[b, klo+s, g, :]
        dqs.add(in.k + (krow * Dh + g * Dh) * es, dsIn + i * n * Sc * es, dq + qrow * Dh + h * Dh);
      }
    if (mla_status e = run_batch(scores, CUBLAS_OP_T, CUBLAS_OP_N, Sc, n, Dh, Hkv * Dh, H * Dh, Sc, 0.0f, in.type)) return e;
    if (mla_status e = run_batch(dprobs, CUBLAS_OP_T, CUBLAS_OP_N, Sc, n, Dv, Hkv * Dv, H * Dv, Sc, 0.0f, in.type)) return e;
    k_softmax_chunk<<<(unsigned)(B * H * n), 256, 0, stream>>>(P, Pb, true, n, Sc, scale, t0 + off, klo, S, window);
    KERNEL_CHECK();
    k_softmax_backward_chunk<<<(unsigned)(B * H * n), 256, 0, stream>>>(P, dP, dSb, Sc, scale);  // dP becomes dS
    KERNEL_CHECK();
    if (mla_status e = run_batch(dqs, CUBLAS_OP_N, CUBLAS_OP_N, Dh, n, Sc, Hkv * Dh, Sc, H * Dh, 0.0f, in.type)) return e;
    // dk[b, klo+s, g, :] += Σ_t dS[b,h][t, s]·q[b, t0+t, h, :] and dv[…] += Σ_t P[b,h][t, s]·dout[b, t0+t, h, :]
    // for the heads h of group g: one batched call per head of the group, so no two entries share an output.
    for (int64_t j = 0; j < group; j++) {
      Batch dks, dvs;
      for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < Hkv; g++) {
          const int64_t h = g * group + j, i = b * H + h;
          const int64_t krow = (b * S + klo) * Hkv, qrow = (b * T + t0) * H;
          dks.add(in.q + (qrow * Dh + h * Dh) * es, dsIn + i * n * Sc * es, dk + krow * Dh + g * Dh);
          dvs.add(in.dout + (qrow * Dv + h * Dv) * es, pIn + i * n * Sc * es, dv + krow * Dv + g * Dv);
        }
      if (mla_status e = run_batch(dks, CUBLAS_OP_N, CUBLAS_OP_T, Dh, Sc, n, H * Dh, Sc, Hkv * Dh, 1.0f, in.type)) return e;
      if (mla_status e = run_batch(dvs, CUBLAS_OP_N, CUBLAS_OP_T, Dv, Sc, n, H * Dv, Sc, Hkv * Dv, 1.0f, in.type)) return e;
    }
  }
  return MLA_OK;
}
