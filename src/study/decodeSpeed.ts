/** The study's decode measurement (one row's "decode tokens/s"). */
import { selectBackend, type DeviceName } from "../backends/select.js";
import { loadModel } from "../model/llama.js";
import type { DecodeCache } from "../model/kvCache.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import { nextTurn } from "../util/abort.js";
import { silentLogger } from "../util/log.js";
import { Progress, type ProgressSink } from "../util/progress.js";

export interface DecodeSpeedOptions {
  /** Receives a line per forward pass (throttled): DECODE_BATCH prefills, then DECODE_STEPS decode steps. */
  progress?: ProgressSink | null;
  /** Aborting it stops the measurement after its forward pass under way (MlaError INTERRUPTED); it writes nothing. */
  signal?: AbortSignal;
}

/**
 * Decode speed of a trained model where the KV cache is what a step reads: DECODE_BATCH sequences,
 * each prefilled to DECODE_CONTEXT tokens (less where the model's positions end sooner), then
 * DECODE_STEPS greedy steps of the whole batch at once (Llama.decodeBatch). Tokens/s over all
 * sequences. (At one short sequence a small model's step is weights and dispatch, and the latent
 * width would not show.)
 */
export const DECODE_BATCH = 16, DECODE_CONTEXT = 1024, DECODE_STEPS = 32;
export async function decodeSpeed(dir: string, device: DeviceName, o: DecodeSpeedOptions = {}): Promise<number> {
  const { model, config } = loadModel(dir, { backend: selectBackend(device, silentLogger) });
  const V = config.vocabSize;
  const context = Math.max(1, Math.min(DECODE_CONTEXT, config.maxPositions - DECODE_STEPS - 1));
  // A study measures one model after another in one process: each model's weights and caches go back
  // to the backend when its measurement ends, however it ends.
  const caches: DecodeCache[] = [];
  try {
    for (let b = 0; b < DECODE_BATCH; b++) caches.push(model.newCache());
    const next = new Int32Array(DECODE_BATCH);
    const argmax = (logits: Float32Array | Float64Array, row: number) => {
      let best = 0;
      for (let i = 1; i < V; i++) if (logits[row * V + i]! > logits[row * V + best]!) best = i;
      return best;
    };
    const progress = new Progress("decode speed", DECODE_BATCH + DECODE_STEPS, "forwards", o.progress ?? null);
    // A turn of the event loop after each forward pass, so a Ctrl-C handler's abort is seen there: the
    // passes never leave the JavaScript thread on the CPU (the whole measurement takes 1.3 s on the
    // 260K-parameter fixture, far longer on a real model), and without a turn the stop would wait for its end.
    for (const [b, cache] of caches.entries()) {
      const prompt = Int32Array.from({ length: context }, (_, i) => 3 + (((i + 1) * 7919 + b * 104729) % (V - 3)));
      // The last row's logits only: a forward's [context, V] would be 131 MB a sequence at Llama-2's vocabulary.
      next[b] = argmax(readOnce(model.prefill(prompt, cache)), 0);
      progress.tick();
      await nextTurn(o.signal);
    }
    // Only the steps are timed, not the turns between them (nor the progress lines), so the rate is the
    // one an unbroken loop measures: each step ends by reading its logits back, so the device is idle
    // during a turn.
    let ms = 0;
    for (let s = 0; s < DECODE_STEPS; s++) {
      const t0 = performance.now();
      const logits = readOnce(model.decodeBatch(next, caches));
      for (let b = 0; b < DECODE_BATCH; b++) next[b] = argmax(logits, b);
      ms += performance.now() - t0;
      progress.tick();
      await nextTurn(o.signal);
    }
    return (DECODE_BATCH * DECODE_STEPS) / (ms / 1000);
  } finally {
    for (const c of caches) c.dispose();
    model.dispose();
  }
}

/** A tensor's values, the tensor freed. */
function readOnce(t: Tensor): FloatArray {
  try {
    return t.toArray();
  } finally {
    t.dispose();
  }
}
