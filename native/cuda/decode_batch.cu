// Decode of B sequences in one native call per layer: each sequence attends over its own cache (its
// own buffer and length) through cuBLAS strided-batched GEMMs issued from here, around one softmax
// kernel for the whole batch, and the new rows reach their caches through one scatter kernel. Per-call
// tables (per-sequence ranges, destination pointers) go to the device through mla::stage_to_device.
#include <cstdlib>
#include <cstring>
#include <vector>
#include "common.cuh"
#include "kv_quant.cuh"

using mla::ctx;

namespace {
using mla::stage_to_device;

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// Row h of sequence b: scores + range[2b] + h·range[2b+1], softmax(scale·row) over all of its n keys.
__global__ void k_softmax_ragged(float* scores, const int64_t* range, float scale) {
  __shared__ float red[32];
  const int64_t n = range[2 * blockIdx.y + 1];
  softmax_row(scores + range[2 * blockIdx.y] + blockIdx.x * n, n, scale, 0, n - 1, red);
}

// Destination of row b: dst[b], or in a decode graph dst[b] (the cache's base) + pos[b]·n (its next row).
template <typename T>
__device__ __forceinline__ T* row_target(T* const* dst, const int32_t* pos, int64_t n) {
  return pos ? dst[blockIdx.y] + (int64_t)pos[blockIdx.y] * n : dst[blockIdx.y];
}

__global__ void k_scatter_rows(const float* src, float* const* dst, const int32_t* pos, int64_t n) {
  const float* s = src + blockIdx.y * n;
  float* d = row_target(dst, pos, n);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) d[i] = s[i];
}

// A batch of GEMMs, column-major as cuBLAS sees it: one group per sequence (its key count differs
// from the others'), each group a strided batch over the sequence's head groups. Measured on the
// H200 (bench/decode-attention.ts): a strided-batched call per group runs 5–7× faster than the same
// problems as one cublasSgemmGroupedBatched, whose kernels suit these skinny products (n = the heads of one group) poorly.
struct Gemms {
  struct Group {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, count;
    long long sa, sb, sc;  // elements
    const void* A;
    const void* B;
    float* C;
    float beta;
  };
  std::vector<Group> groups;
  // in: the type of A and B (CUDA_R_32F, or CUDA_R_16BF for bf16 caches with bf16 queries/weights);
  // C is float32 and the accumulation float32 either way.
  mla_status run(cudaDataType_t in) const {
    const float one = 1;
    // MHA2MLA_DECODE_TF32=1: float32 inputs on tensor cores, rounded to TF32 (10-bit mantissa).
    const char* tf32 = getenv("MHA2MLA_DECODE_TF32");
    const cublasComputeType_t compute = in == CUDA_R_32F && tf32 && strcmp(tf32, "1") == 0 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    for (const Group& g : groups)
      CUBLAS_TRY(cublasGemmStridedBatchedEx(ctx()->blas, g.ta, g.tb, g.m, g.n, g.k, &one, g.A, in, g.lda, g.sa, g.B, in, g.ldb, g.sb, &g.beta, g.C, CUDA_R_32F, g.ldc, g.sc, g.count, compute, CUBLAS_GEMM_DEFAULT));
    return MLA_OK;
  }
};

// k_softmax_ragged, then a bf16 copy of the probabilities for the value GEMM on bf16 caches.
__global__ void k_softmax_ragged_bf16(float* scores, __nv_bfloat16* probs, const int64_t* range, float scale) {
  __shared__ float red[32];
  const int64_t n = range[2 * blockIdx.y + 1];
  const int64_t at = range[2 * blockIdx.y] + blockIdx.x * n;
  softmax_row(scores + at, n, scale, 0, n - 1, red);
  __syncthreads();
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) probs[at + s] = __float2bfloat16(scores[at + s]);
}

__global__ void k_scatter_rows_bf16(const float* src, __nv_bfloat16* const* dst, const int32_t* pos, int64_t n) {
  const float* s = src + blockIdx.y * n;
  __nv_bfloat16* d = row_target(dst, pos, n);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) d[i] = __float2bfloat16(s[i]);
}
}  // namespace

// Decode over quantized caches (int8/int4, kv_quant.cuh): each sequence's visible rows of every part
// are dequantized into bf16 rows in one temporary buffer (the latent, both MLA's key part and its
// value, once), and the bf16 route below runs on them. The stores hold a quarter (int4: an eighth) of
// float32's bytes; each step reads them and writes and reads one layer's bf16 rows.
struct QuantPart {
  const mla_cuda_buf* const* src;  // per sequence (null: the part is absent)
  int64_t n;                       // values per row
};
static bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
static mla_status decode_quantized(const mla_cuda_buf* q1, const mla_cuda_buf* const* k1s, int64_t G1, int64_t D1, const mla_cuda_buf* q2, const mla_cuda_buf* const* k2s, int64_t G2, int64_t D2, const mla_cuda_buf* const* vs, int64_t Gv, int64_t Dv, const int32_t* pos, mla_cuda_buf* o, int64_t B, int64_t H, float scale, int64_t window, int32_t dt) {
  const int bits = mla::kv_bits(dt);
  const bool rope = q2 && D2 > 0;
  bool shared = true;  // the value part is the first key part (MLA's latent): dequantized once
  for (int64_t b = 0; b < B; b++) shared = shared && vs[b] == k1s[b];
  const QuantPart parts[3] = {{k1s, G1 * D1}, {rope ? k2s : nullptr, G2 * D2}, {shared ? nullptr : vs, Gv * Dv}};
  const bool capture = mla::capturing() != nullptr;
  // Rows per sequence: its visible prefix, or in a decode graph every row its store holds room for
  // (the graph replays later steps over the same buffer).
  std::vector<int64_t> rows(B);
  for (int64_t b = 0; b < B; b++) {
    MLA_CHECK(pos[b] >= 0 && k1s[b] && vs[b] && (!rope || k2s[b]), "decode_attention_batch: sequence " + std::to_string(b) + " has no cache or a negative position");
    for (const QuantPart& p : parts) {
      if (!p.src) continue;
      const mla_cuda_buf* c = p.src[b];
      MLA_CHECK(c->dtype == dt && c->n >= ((int64_t)pos[b] + 1) * mla::kv_row_bytes(p.n, bits), "decode_attention_batch: sequence " + std::to_string(b) + "'s quantized cache holds fewer than pos + 1 rows, or its parts differ in dtype from sequence 0's");
    }
    rows[b] = capture ? k1s[b]->n / mla::kv_row_bytes(G1 * D1, bits) : (int64_t)pos[b] + 1;
  }
  // MLA's latent form on int8 stores: the kernel that reads the integers itself (latent_decode_q8.cu).
  bool q8 = dt == MLA_Q8 && shared && G1 == 1 && Gv == 1 && D1 == Dv && (!rope || aligned16(q2->ptr)) && aligned16(q1->ptr) && aligned16(o->ptr) && mla::latent_decode_q8_takes(D1, H, rope ? G2 : 1, rope ? D2 : 0);
  for (int64_t b = 0; q8 && b < B; b++) q8 = aligned16(k1s[b]->ptr) && (!rope || aligned16(k2s[b]->ptr));
  if (q8) {
    std::vector<const unsigned char*> cs(B), krs(B);
    std::vector<int64_t> lo(B), n(B);
    for (int64_t b = 0; b < B; b++) {
      cs[b] = (const unsigned char*)k1s[b]->ptr;
      krs[b] = rope ? (const unsigned char*)k2s[b]->ptr : nullptr;
      const int64_t S = (int64_t)pos[b] + 1;
      lo[b] = window > 0 && S > window ? S - window : 0;
      n[b] = S - lo[b];
    }
    return mla::latent_decode_q8(cs.data(), krs.data(), lo.data(), n.data(), pos, window, (const float*)q1->ptr, rope ? (const float*)q2->ptr : nullptr, (float*)o->ptr, B, H, rope ? G2 : 1, rope ? D2 : 0, D1, scale);
  }
  // MHA/GQA on int8 stores: the MHA kernel reading the integers (mha_decode.cu), as it takes bf16 caches.
  bool mhaQ8 = dt == MLA_Q8 && !rope && !shared && G1 == Gv && D1 == Dv && mla::mha_decode_takes(H, G1, D1);
  for (int64_t b = 0; mhaQ8 && b < B; b++) mhaQ8 = aligned16(k1s[b]->ptr) && aligned16(vs[b]->ptr);
  if (mhaQ8) {
    std::vector<const unsigned char*> ks(B), vv(B);
    std::vector<int64_t> lo(B), n(B);
    for (int64_t b = 0; b < B; b++) {
      ks[b] = (const unsigned char*)k1s[b]->ptr;
      vv[b] = (const unsigned char*)vs[b]->ptr;
      const int64_t S = (int64_t)pos[b] + 1;
      lo[b] = window > 0 && S > window ? S - window : 0;
      n[b] = S - lo[b];
    }
    return mla::mha_decode_q8(ks.data(), vv.data(), lo.data(), n.data(), pos, window, (const float*)q1->ptr, (float*)o->ptr, B, H, G1, D1, scale);
  }
  auto a256 = [](size_t x) { return (x + 255) & ~size_t(255); };
  const size_t tableBytes = a256(3 * 2 * B * sizeof(void*)), posBytes = a256(B * sizeof(int32_t));
  size_t total = tableBytes + posBytes;
  std::vector<size_t> at(3 * B);
  for (int p = 0; p < 3; p++)
    for (int64_t b = 0; b < B; b++)
      if (parts[p].src) at[p * B + b] = total, total += a256((size_t)rows[b] * parts[p].n * 2);
  mla_cuda_buf* tmp = mla_cuda_alloc((int64_t)(total / 2), MLA_BF16);
  if (!tmp) return MLA_ERR_MEMORY;
  char* base = (char*)tmp->ptr;
  std::vector<const void*> table(3 * 2 * B, nullptr);  // per part: B sources, then B destinations
  std::vector<mla_cuda_buf> views(3 * B);
  for (int p = 0; p < 3; p++)
    for (int64_t b = 0; b < B; b++)
      if (parts[p].src) {
        table[p * 2 * B + b] = parts[p].src[b]->ptr;
        table[p * 2 * B + B + b] = base + at[p * B + b];
        views[p * B + b] = {base + at[p * B + b], rows[b] * parts[p].n, MLA_BF16, false};
      }
  mla_status st = MLA_OK;
  const void* dtable = nullptr;
  const int32_t* dpos = nullptr;
  if (capture) {
    if (!(dpos = mla::step_positions(pos, B))) { mla_cuda_free(tmp); return MLA_FAIL(MLA_ERR_UNSUPPORTED, "decode_attention_batch: positions other than the captured step's"); }
    if (!(dtable = mla::capture_constant(table.data(), table.size() * sizeof(void*), &st))) { mla_cuda_free(tmp); return st; }
  } else {
    if ((st = stage_to_device(table.data(), table.size() * sizeof(void*), base)) || (st = stage_to_device(pos, B * sizeof(int32_t), base + tableBytes))) { mla_cuda_free(tmp); return st; }
    dtable = base;
    dpos = (const int32_t*)(base + tableBytes);
  }
  for (int p = 0; p < 3 && !st; p++)
    if (parts[p].src) st = mla::kv_dequant_visible((const unsigned char* const*)dtable + p * 2 * B, (__nv_bfloat16* const*)dtable + p * 2 * B + B, dpos, window, B, parts[p].n, bits);
  if (!st) {
    std::vector<const mla_cuda_buf*> k1v(B), k2v(B), vv(B);
    for (int64_t b = 0; b < B; b++) {
      k1v[b] = &views[b];
      k2v[b] = rope ? &views[B + b] : nullptr;
      vv[b] = shared ? &views[b] : &views[2 * B + b];
    }
    st = mla_cuda_decode_attention_batch(q1, k1v.data(), G1, D1, rope ? q2 : nullptr, rope ? k2v.data() : nullptr, G2, D2, vv.data(), Gv, Dv, pos, o, B, H, scale, window);
  }
  mla_cuda_free(tmp);  // stream-ordered: after the kernels that read it
  return st;
}

// Batched decode attention with a two-part key (the MLA latent form; MHA leaves part 2 out):
// for sequence b and head h, score(s) = q1[b,h]·k1_b[s, g1(h)] + q2[b,h]·k2_b[s, g2(h)] over its
// visible keys s (causal at pos[b], sliding window), o[b,h] = Σ softmax(scale·score)(s) · v_b[s, gv(h)].
// q1 [B,H,D1], k1s[b] [≥pos[b]+1, G1, D1]; q2 [B,H,D2], k2s[b] [.., G2, D2] (q2 null: no part 2);
// vs[b] [.., Gv, Dv]; o [B,H,Dv]; g(h) = h / (H/G). Queries float32; caches float32, bf16, int8 or int4;
// output float32, or bf16 where the fused latent kernel takes the call (else MLA_ERR_ARGUMENT, nothing
// launched: the caller asks again with a float32 output).
extern "C" mla_status mla_cuda_decode_attention_batch(const mla_cuda_buf* q1, const mla_cuda_buf* const* k1s, int64_t G1, int64_t D1, const mla_cuda_buf* q2, const mla_cuda_buf* const* k2s, int64_t G2, int64_t D2, const mla_cuda_buf* const* vs, int64_t Gv, int64_t Dv, const int32_t* pos, mla_cuda_buf* o, int64_t B, int64_t H, float scale, int64_t window) {
  NEED_CTX();
  MLA_CHECK(q1 && k1s && vs && o && pos && B > 0 && H > 0 && G1 > 0 && Gv > 0 && H % G1 == 0 && H % Gv == 0 && (!q2 || (k2s && G2 > 0 && H % G2 == 0)), "decode_attention_batch: q1, k1s, vs, o, pos and head groups dividing H");
  MLA_CHECK(q1->n == B * H * D1 && o->n == B * H * Dv && (!q2 || q2->n == B * H * D2) && q1->dtype == MLA_F32 && (o->dtype == MLA_F32 || o->dtype == MLA_BF16), "decode_attention_batch: q1 [B,H,D1] float32, q2 [B,H,D2] float32, o [B,H,Dv] float32 or bf16");
  // The caches are all float32 or all bf16 (a bf16 cache is read by bf16 tensor-core GEMMs: the
  // queries and the softmax probabilities are rounded to bf16 for them, accumulation stays float32).
  const int32_t kdt = k1s[0] ? k1s[0]->dtype : MLA_F32;
  const bool obf16 = o->dtype == MLA_BF16;
  MLA_CHECK(!obf16 || kdt == MLA_BF16, "decode_attention_batch: a bf16 output only from bf16 caches (the fused latent kernel)");
  if (mla::kv_quantized(kdt)) return decode_quantized(q1, k1s, G1, D1, q2, k2s, G2, D2, vs, Gv, Dv, pos, o, B, H, scale, window, kdt);
  MLA_CHECK(kdt == MLA_F32 || kdt == MLA_BF16, "decode_attention_batch: caches must be float32, bf16, int8 or int4");
  const bool half = kdt == MLA_BF16;
  const size_t es = half ? 2 : 4;
  std::vector<int64_t> range(2 * B);  // per sequence: offset of its scores, number of visible keys
  std::vector<int64_t> lo(B);
  int64_t total = 0;
  for (int64_t b = 0; b < B; b++) {
    const int64_t S = (int64_t)pos[b] + 1;
    lo[b] = window > 0 && S > window ? S - window : 0;
    const bool q2ok = !q2 || (k2s[b] && k2s[b]->dtype == kdt && k2s[b]->n >= S * G2 * D2);
    MLA_CHECK(pos[b] >= 0 && k1s[b] && vs[b] && k1s[b]->dtype == kdt && vs[b]->dtype == kdt && k1s[b]->n >= S * G1 * D1 && vs[b]->n >= S * Gv * Dv && q2ok, "decode_attention_batch: sequence " + std::to_string(b) + "'s cache holds fewer than pos + 1 = " + std::to_string(S) + " rows, or its parts differ in dtype from sequence 0's");
    range[2 * b] = total;
    range[2 * b + 1] = S - lo[b];
    total += H * (S - lo[b]);
  }
  // MLA's latent form (the latent is the one-group key part and the value) on bf16 caches: the fused kernel.
  const bool rope = q2 && D2 > 0;
  bool latent = half && G1 == 1 && Gv == 1 && D1 == Dv && mla::latent_decode_takes(D1, H, rope ? G2 : 1, rope ? D2 : 0);
  // Its bulk copies need 16-byte aligned rows and its query loads 8-byte aligned queries: views at odd
  // offsets take the GEMMs.
  auto aligned = [](const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; };
  latent = latent && aligned(q1->ptr, 8) && (!rope || aligned(q2->ptr, 8));
  for (int64_t b = 0; latent && b < B; b++) latent = k1s[b]->ptr == vs[b]->ptr && aligned(k1s[b]->ptr, 16) && (!rope || aligned(k2s[b]->ptr, 16));
  MLA_CHECK(!obf16 || latent, "decode_attention_batch: a bf16 output only where the fused latent kernel takes the call (bf16 caches, its latent widths, aligned rows)");
  if (latent) {
    std::vector<const __nv_bfloat16*> cs(B), krs(B);
    std::vector<int64_t> n(B);
    for (int64_t b = 0; b < B; b++) {
      cs[b] = (const __nv_bfloat16*)k1s[b]->ptr;
      krs[b] = rope ? (const __nv_bfloat16*)k2s[b]->ptr : nullptr;
      n[b] = range[2 * b + 1];
    }
    return mla::latent_decode(cs.data(), krs.data(), lo.data(), n.data(), pos, window, (const float*)q1->ptr, rope ? (const float*)q2->ptr : nullptr, o->ptr, obf16, B, H, rope ? G2 : 1, rope ? D2 : 0, D1, scale);
  }
  // MHA/GQA on bf16 caches: its own split kernel (mha_decode.cu), for 16-byte aligned rows.
  bool mha = half && !q2 && G1 == Gv && D1 == Dv && mla::mha_decode_takes(H, G1, D1);
  for (int64_t b = 0; mha && b < B; b++) mha = aligned(k1s[b]->ptr, 16) && aligned(vs[b]->ptr, 16);
  if (mha) {
    std::vector<const __nv_bfloat16*> ks(B), vv(B);
    std::vector<int64_t> n(B);
    for (int64_t b = 0; b < B; b++) {
      ks[b] = (const __nv_bfloat16*)k1s[b]->ptr;
      vv[b] = (const __nv_bfloat16*)vs[b]->ptr;
      n[b] = range[2 * b + 1];
    }
    return mla::mha_decode(ks.data(), vv.data(), lo.data(), n.data(), pos, window, (const float*)q1->ptr, (float*)o->ptr, B, H, G1, D1, scale);
  }
  // The GEMMs' shapes follow every sequence's length, which a replay cannot change.
  if (mla::capturing()) return mla::refuse("decode attention on this cache takes the cuBLAS route (recorded are the fused latent kernel and the MHA kernel on bf16 caches, unless MHA2MLA_MHA_DECODE=cublas)");
  // One scratch: the scores of every sequence [H, n_b] back to back, the softmax ranges, and for bf16
  // caches the bf16 probabilities and queries.
  mla_status st;
  const size_t scores_bytes = align256(total * sizeof(float));
  const size_t range_bytes = align256(range.size() * sizeof(int64_t));
  const size_t probs_bytes = half ? align256(total * 2) : 0;
  const size_t q1_bytes = half ? align256(B * H * D1 * 2) : 0;
  const size_t q2_bytes = half && q2 ? align256(B * H * D2 * 2) : 0;
  char* base = (char*)mla::scratch(scores_bytes + range_bytes + probs_bytes + q1_bytes + q2_bytes, &st);
  if (!base) return st;
  float* scores = (float*)base;
  int64_t* dev_range = (int64_t*)(base + scores_bytes);
  char* probs = base + scores_bytes + range_bytes;  // bf16 only
  const char* Q1 = (const char*)q1->ptr;
  const char* Q2 = q2 ? (const char*)q2->ptr : nullptr;
  if (half) {
    __nv_bfloat16* q1h = (__nv_bfloat16*)(probs + probs_bytes);
    if (mla_status e = mla::narrow_f32((const float*)q1->ptr, q1h, B * H * D1)) return e;
    Q1 = (const char*)q1h;
    if (q2 && D2 > 0) {
      __nv_bfloat16* q2h = (__nv_bfloat16*)(probs + probs_bytes + q1_bytes);
      if (mla_status e = mla::narrow_f32((const float*)q2->ptr, q2h, B * H * D2)) return e;
      Q2 = (const char*)q2h;
    }
  }
  float* O = (float*)o->ptr;
  Gemms s1, s2, pv;
  for (int64_t b = 0; b < B; b++) {
    const int n = (int)range[2 * b + 1];
    float* sc = scores + range[2 * b];
    // The value GEMM reads the probabilities as its B operand: the float32 scores, or their bf16 copy.
    const char* p = half ? probs + range[2 * b] * 2 : (const char*)sc;
    const char* k1 = (const char*)k1s[b]->ptr + lo[b] * G1 * D1 * es;
    s1.groups.push_back({CUBLAS_OP_T, CUBLAS_OP_N, n, (int)(H / G1), (int)D1, (int)(G1 * D1), (int)D1, n, (int)G1, D1, (H / G1) * D1, (H / G1) * n, k1, Q1 + b * H * D1 * es, sc, 0.0f});
    if (q2 && D2 > 0)
      s2.groups.push_back({CUBLAS_OP_T, CUBLAS_OP_N, n, (int)(H / G2), (int)D2, (int)(G2 * D2), (int)D2, n, (int)G2, D2, (H / G2) * D2, (H / G2) * n, (const char*)k2s[b]->ptr + lo[b] * G2 * D2 * es, Q2 + b * H * D2 * es, sc, 1.0f});
    pv.groups.push_back({CUBLAS_OP_N, CUBLAS_OP_N, (int)Dv, (int)(H / Gv), n, (int)(Gv * Dv), n, (int)Dv, (int)Gv, Dv, (H / Gv) * n, (H / Gv) * Dv, (const char*)vs[b]->ptr + lo[b] * Gv * Dv * es, p, O + b * H * Dv, 0.0f});
  }
  if (mla_status e = stage_to_device(range.data(), range.size() * sizeof(int64_t), dev_range)) return e;
  const cudaDataType_t in = half ? CUDA_R_16BF : CUDA_R_32F;
  if (mla_status e = s1.run(in)) return e;
  if (mla_status e = s2.run(in)) return e;
  if (half) k_softmax_ragged_bf16<<<dim3((unsigned)H, (unsigned)B), 256, 0, ctx()->stream>>>(scores, (__nv_bfloat16*)probs, dev_range, scale);
  else k_softmax_ragged<<<dim3((unsigned)H, (unsigned)B), 256, 0, ctx()->stream>>>(scores, dev_range, scale);
  KERNEL_CHECK();
  return pv.run(in);
}

// Row b of src [B, n] → dsts[b] at element offsets[b] (each new token's row into its own cache).
extern "C" mla_status mla_cuda_scatter_rows(const mla_cuda_buf* src, mla_cuda_buf* const* dsts, const int64_t* offsets, int64_t B, int64_t n) {
  NEED_CTX();
  MLA_CHECK(src && dsts && offsets && B > 0 && n >= 0 && src->n == B * n && src->dtype == MLA_F32, "scatter_rows: src [B, n] float32, B destinations");
  if (n == 0) return MLA_OK;
  // Destinations all float32 or all bf16 (a bf16 cache stores the rounded row), or all quantized
  // (each row quantized into its store: offsets are whole rows of n values there).
  const int32_t dt = dsts[0] ? dsts[0]->dtype : MLA_F32;
  if (mla::kv_quantized(dt)) {
    std::vector<int64_t> rows(B);
    for (int64_t b = 0; b < B; b++) {
      MLA_CHECK(offsets[b] >= 0 && offsets[b] % n == 0, "scatter_rows: offset " + std::to_string(offsets[b]) + " of destination " + std::to_string(b) + " is not a whole row of a quantized store");
      rows[b] = offsets[b] / n;
    }
    return mla_cuda_kv_quant_rows(src, dsts, rows.data(), B, n);
  }
  const size_t es = dt == MLA_BF16 ? 2 : 4;
  std::vector<char*> targets(B);
  for (int64_t b = 0; b < B; b++) {
    MLA_CHECK(dsts[b] && dsts[b]->dtype == dt && (dt == MLA_F32 || dt == MLA_BF16) && offsets[b] >= 0 && offsets[b] + n <= dsts[b]->n, "scatter_rows: destination " + std::to_string(b) + " has no room for a row of " + std::to_string(n) + " at element " + std::to_string(offsets[b]) + ", or is not of destination 0's dtype (float32 or bf16)");
    targets[b] = (char*)dsts[b]->ptr + offsets[b] * es;
  }
  mla_status st = MLA_OK;
  const void* dev = nullptr;
  const int32_t* pos = nullptr;
  if (mla::capturing()) {
    // A decode graph: the caches' bases are fixed while it lives, the rows move with the step's
    // positions, so each offset must be the sequence's position times the row (its next row).
    std::vector<int32_t> rows(B);
    for (int64_t b = 0; b < B; b++) {
      if (n == 0 || offsets[b] % n) return mla::refuse("scatter_rows: an offset that is not a whole row");
      rows[b] = (int32_t)(offsets[b] / n);
      targets[b] = (char*)dsts[b]->ptr;
    }
    if (!(pos = mla::step_positions(rows.data(), B))) return MLA_FAIL(MLA_ERR_UNSUPPORTED, "scatter_rows: rows other than the captured step's positions");
    if (!(dev = mla::capture_constant(targets.data(), B * sizeof(char*), &st))) return st;
  } else {
    void* d = mla::scratch(B * sizeof(float*), &st);
    if (!d) return st;
    if (mla_status e = stage_to_device(targets.data(), B * sizeof(float*), d)) return e;
    dev = d;
  }
  const unsigned chunks = (unsigned)((n + 1023) / 1024 < 64 ? (n + 1023) / 1024 : 64);
  if (dt == MLA_BF16) k_scatter_rows_bf16<<<dim3(chunks, (unsigned)B), 256, 0, ctx()->stream>>>((const float*)src->ptr, (__nv_bfloat16* const*)dev, pos, n);
  else k_scatter_rows<<<dim3(chunks, (unsigned)B), 256, 0, ctx()->stream>>>((const float*)src->ptr, (float* const*)dev, pos, n);
  KERNEL_CHECK();
  return MLA_OK;
}
