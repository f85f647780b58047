/**
 * The reference backend's attention over B sequences laid out as the batched kernels take them, for
 * the CUDA attention tests: q [B·T,H,Dh], k [B·S,Hkv,Dh], v [B·S,Hkv,Dv], dout [B·T,H,Dv] (flat), each
 * sequence computed alone; returns o and the three gradients in the same layouts.
 */
import { referenceBackend as R } from "../../src/backends/reference/index.js";

export interface BatchedAttentionCase {
  nb: number;
  T: number;
  S: number;
  H: number;
  Hkv: number;
  Dh: number;
  Dv: number;
  off: number;
  window: number | null;
}

export function referenceBatchedAttention(c: BatchedAttentionCase, q: Float32Array, k: Float32Array, v: Float32Array, d: Float32Array): { o: Float32Array; dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  const { nb, T, S, H, Hkv, Dh, Dv } = c;
  const out = { o: new Float32Array(nb * T * H * Dv), dq: new Float32Array(nb * T * H * Dh), dk: new Float32Array(nb * S * Hkv * Dh), dv: new Float32Array(nb * S * Hkv * Dv) };
  const opts = { scale: 1 / Math.sqrt(Dh), queryOffset: c.off, window: c.window };
  for (let s = 0; s < nb; s++) {
    const sl = (x: Float32Array, rows: number, w: number) => x.slice(s * rows * w, (s + 1) * rows * w);
    const [Q, K, V, D] = [R.upload(sl(q, T, H * Dh), [T, H, Dh]), R.upload(sl(k, S, Hkv * Dh), [S, Hkv, Dh]), R.upload(sl(v, S, Hkv * Dv), [S, Hkv, Dv]), R.upload(sl(d, T, H * Dv), [T, H, Dv])];
    out.o.set(R.attention(Q, K, V, opts).toArray(), s * T * H * Dv);
    const g = R.attentionBackward(Q, K, V, D, opts);
    out.dq.set(g.dq.toArray(), s * T * H * Dh);
    out.dk.set(g.dk.toArray(), s * S * Hkv * Dh);
    out.dv.set(g.dv.toArray(), s * S * Hkv * Dv);
  }
  return out;
}

/** ‖got − want‖ / ‖want‖; for a reference of exact zeros (one visible key: dq = dk = 0), the RMS error. */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i]! - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  return den === 0 ? Math.sqrt(num / want.length) : Math.sqrt(num / den);
}
