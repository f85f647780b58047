/**
 * The native CPU backend's batched decode attention over bf16 caches held as bf16
 * (hostRowStore.ts): each sequence's rows go to the kernel as stored (native/cpu/decode_bf16.cpp),
 * half the bytes of float32 rows, with the result the float32 kernel gives on the widened rows, bit
 * for bit. Sequences whose rows are float32 (another cache dtype in the batch) take that kernel.
 */
import { attentionDecodeBatchDims, attentionWindow, latentAttentionDecodeBatchDims, type DecodeBatchOptions } from "../../tensor/backend.js";
import type { Tensor } from "../../tensor/tensor.js";

type Fn = (...args: unknown[]) => number;

/** What the functions below need of the backend: its kernels, its status check, its tensors. */
export interface DecodeKernels {
  attention: Fn;
  attentionBf16: Fn;
  latentAttention: Fn;
  latentAttentionBf16: Fn;
  call(op: string, status: number): void;
  make(shape: readonly number[], values: Float32Array): Tensor;
}

/** Whether any of `parts` holds bf16 rows (else the float32 route stays as it was). */
export function anyBf16(...parts: readonly (readonly Tensor[])[]): boolean {
  return parts.some((p) => p.some((t) => t.dtype === "bf16"));
}

/** The first n values of t's storage: a bf16 tensor's bits, or its float32 values. */
function head(t: Tensor, n: number): Float32Array | Uint16Array {
  const s = t.storage as Float32Array | Uint16Array;
  return s.subarray(0, n);
}

function f32(t: Tensor): Float32Array {
  const s = t.storage as Float32Array | Float64Array;
  return s instanceof Float32Array ? s : Float32Array.from(s);
}

/** Backend.attentionDecodeBatch: q [B,H,Dh], k[b] [≥S_b,Hkv,Dh], v[b] [≥S_b,Hkv,Dv] (bf16 or float32 rows, one dtype per sequence) → [B,H,Dv]. */
export function attentionDecodeRows(K: DecodeKernels, q: Tensor, k: readonly Tensor[], v: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
  const { B, H, Hkv, Dh, Dv } = attentionDecodeBatchDims(q, k, v, opts);
  const window = attentionWindow("attentionDecodeBatch", opts.window);
  const Q = f32(q);
  const o = new Float32Array(B * H * Dv);
  for (let b = 0; b < B; b++) {
    const S = opts.positions[b]! + 1;
    const bf16 = k[b]!.dtype === "bf16" && v[b]!.dtype === "bf16";
    const fn = bf16 ? K.attentionBf16 : K.attention;
    const [kb, vb] = bf16 ? [head(k[b]!, S * Hkv * Dh), head(v[b]!, S * Hkv * Dv)] : [f32(k[b]!).subarray(0, S * Hkv * Dh), f32(v[b]!).subarray(0, S * Hkv * Dv)];
    K.call("attention (decode batch)", fn(Q.subarray(b * H * Dh, (b + 1) * H * Dh), kb, vb, o.subarray(b * H * Dv, (b + 1) * H * Dv), 1, S, H, Hkv, Dh, Dv, opts.scale, opts.positions[b]!, window));
  }
  return K.make([B, H, Dv], o);
}

/** Backend.latentAttentionDecodeBatch: qr [B,H,Dr], kr[b] [≥S_b,Hkv,Dr], qc [B,H,L], c[b] [≥S_b,L] (bf16 or float32 rows) → [B,H,L]. */
export function latentAttentionDecodeRows(K: DecodeKernels, qr: Tensor, kr: readonly Tensor[], qc: Tensor, c: readonly Tensor[], opts: DecodeBatchOptions): Tensor {
  const { B, H, Hkv, Dr, L } = latentAttentionDecodeBatchDims(qr, kr, qc, c, opts);
  const window = attentionWindow("latentAttentionDecodeBatch", opts.window);
  const [QR, QC] = [f32(qr), f32(qc)];
  const o = new Float32Array(B * H * L);
  for (let b = 0; b < B; b++) {
    const S = opts.positions[b]! + 1;
    const bf16 = kr[b]!.dtype === "bf16" && c[b]!.dtype === "bf16";
    const fn = bf16 ? K.latentAttentionBf16 : K.latentAttention;
    const [krb, cb] = bf16 ? [head(kr[b]!, S * Hkv * Dr), head(c[b]!, S * L)] : [f32(kr[b]!).subarray(0, S * Hkv * Dr), f32(c[b]!).subarray(0, S * L)];
    K.call("latent attention (decode batch)", fn(QR.subarray(b * H * Dr, (b + 1) * H * Dr), krb, QC.subarray(b * H * L, (b + 1) * H * L), cb, o.subarray(b * H * L, (b + 1) * H * L), 1, S, H, Hkv, Dr, L, opts.scale, opts.positions[b]!, window));
  }
  return K.make([B, H, L], o);
}
