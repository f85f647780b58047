/**
 * Attention over several sequences stacked along the rows (AttentionOptions.batch = B): backends
 * that declare `batchedAttention` take them in one call; for the others each sequence runs on its own
 * and the results are stacked again. q [B·T, H, Dh], k [B·S, Hkv, Dh], v [B·S, Hkv, Dv].
 */
import type { AttentionOptions, AttentionSaved, Backend } from "./backend.js";
import type { Tensor } from "./tensor.js";
import { rowOf, stackRows } from "./rows.js";

/** t [B·R, …rest] as B tensors [R, …rest]. */
function splitSequences(b: Backend, t: Tensor, B: number): Tensor[] {
  const rows = t.shape[0]! / B;
  const seqs = t.reshape([B, rows, ...t.shape.slice(1)]);
  return Array.from({ length: B }, (_, i) => rowOf(b, seqs, i).reshape([rows, ...t.shape.slice(1)]));
}

/** B tensors [R, …rest] as one [B·R, …rest]. */
function joinSequences(b: Backend, parts: Tensor[]): Tensor {
  const rest = parts[0]!.shape;
  return stackRows(b, parts, rest).reshape([parts.length * rest[0]!, ...rest.slice(1)]);
}

export function attentionOf(b: Backend, q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const B = opts.batch ?? 1;
  if (B === 1 || b.batchedAttention) return b.attention(q, k, v, opts);
  const one = { ...opts, batch: 1 };
  const [qs, ks, vs] = [q, k, v].map((t) => splitSequences(b, t, B)) as [Tensor[], Tensor[], Tensor[]];
  return joinSequences(b, qs.map((qi, i) => b.attention(qi, ks[i]!, vs[i]!, one)));
}

/** `attentionOf` with a backward to follow: the output and what the backward may reuse (null where the backend keeps nothing). */
export function attentionForTrainingOf(b: Backend, q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): { o: Tensor; saved: AttentionSaved | null } {
  const B = opts.batch ?? 1;
  if (b.attentionForTraining && (B === 1 || b.batchedAttention)) return b.attentionForTraining(q, k, v, opts);
  return { o: attentionOf(b, q, k, v, opts), saved: null };
}

export function attentionBackwardOf(b: Backend, q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, opts: AttentionOptions, saved?: AttentionSaved | null): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const B = opts.batch ?? 1;
  if (B === 1 || b.batchedAttention) return b.attentionBackward(q, k, v, dOut, opts, saved ?? undefined);
  const one = { ...opts, batch: 1 };
  const [qs, ks, vs, ds] = [q, k, v, dOut].map((t) => splitSequences(b, t, B)) as [Tensor[], Tensor[], Tensor[], Tensor[]];
  const parts = qs.map((qi, i) => b.attentionBackward(qi, ks[i]!, vs[i]!, ds[i]!, one));
  return { dq: joinSequences(b, parts.map((p) => p.dq)), dk: joinSequences(b, parts.map((p) => p.dk)), dv: joinSequences(b, parts.map((p) => p.dv)) };
}
