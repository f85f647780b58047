/** The study's decode measurement (one row's "decode tokens/s"). */
import { selectBackend, type DeviceName } from "../backends/select.js";
import { loadModel } from "../model/llama.js";
import { silentLogger } from "../util/log.js";

/**
 * Decode speed of a trained model where the KV cache is what a step reads: DECODE_BATCH sequences,
 * each prefilled to DECODE_CONTEXT tokens (less where the model's positions end sooner), then
 * DECODE_STEPS greedy steps of the whole batch at once (Llama.decodeBatch). Tokens/s over all
 * sequences. (At one short sequence a small model's step is weights and dispatch, and the latent
 * width would not show.)
 */
export const DECODE_BATCH = 16, DECODE_CONTEXT = 1024, DECODE_STEPS = 32;
export function decodeSpeed(dir: string, device: DeviceName): number {
  const { model, config } = loadModel(dir, { backend: selectBackend(device, silentLogger) });
  const V = config.vocabSize;
  const context = Math.max(1, Math.min(DECODE_CONTEXT, config.maxPositions - DECODE_STEPS - 1));
  const caches = Array.from({ length: DECODE_BATCH }, () => model.newCache());
  const next = new Int32Array(DECODE_BATCH);
  const argmax = (logits: Float32Array | Float64Array, row: number) => {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[row * V + i]! > logits[row * V + best]!) best = i;
    return best;
  };
  caches.forEach((cache, b) => {
    const prompt = Int32Array.from({ length: context }, (_, i) => 3 + (((i + 1) * 7919 + b * 104729) % (V - 3)));
    const logits = model.forward(prompt, cache).toArray();
    next[b] = argmax(logits, context - 1);
  });
  const t0 = performance.now();
  for (let s = 0; s < DECODE_STEPS; s++) {
    const logits = model.decodeBatch(next, caches).toArray();
    for (let b = 0; b < DECODE_BATCH; b++) next[b] = argmax(logits, b);
  }
  return (DECODE_BATCH * DECODE_STEPS) / ((performance.now() - t0) / 1000);
}
