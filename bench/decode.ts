/**
 * Decode throughput and KV-cache size, original MHA/GQA model vs its MLA conversion (absorbed
 * up-projections, latent cache), in our runtime, side by side in one run (issue 4, acceptance 5).
 * For each context: prefill CTX random tokens into a fresh cache, then time STEPS single-token
 * forwards (each ends by reading the logits back, so GPU work is included). Batch B > 1 decodes B
 * sequences together with LlamaModel.decodeBatch (weights read once per step, attention per
 * sequence); their caches are copies of one prefilled sequence (decode time does not depend on what
 * the cache holds, and B prefills of 16k tokens would take longer than the measurement). Tokens/s is
 * summed over the batch; where B sequences would not fit in GPU memory the row says so.
 * MLA decodes in the absorbed form absorbForm picks (MHA2MLA_ABSORB=runtime|premultiplied forces one).
 * Each row also gives its share of the HBM bound: the bytes one step must read (every weight but the
 * embedding table, once for the batch, plus each sequence's whole cache as stored: float32 here)
 * over the card's peak bandwidth (bench/hbm.json: 4.8 TB/s on an H200, 3.35 on an H100 SXM), against the
 * measured step time.
 * Each row times --repeats windows of --steps steps and reports the median window (the range beside it).
 * Steps go through a DecodeSession, which replays a recorded step (CUDA graph) where it can: the row
 * says "CUDA graph", or why not; --graphs 0 runs every step op by op.
 * Run: node dist/bench/decode.js MHA_DIR MLA_DIR [--device cuda] [--kv-cache f32|bf16|int8|int4] [--graphs 0|1] [--readback ids|logits|ids,logits] [--contexts 1024,4096,16384] [--batches 1,32] [--steps 32] [--repeats 3]
 */
import { selectBackend, type DeviceName } from "../src/backends/select.js";
import { CudaBackend } from "../src/backends/native/cuda.js";
import { loadModel } from "../src/model/llama.js";
import { absorbForm } from "../src/model/attention/mla.js";
import { DecodeSession } from "../src/model/decodeSession.js";
import { checkKvCacheDtype } from "../src/model/kvQuant.js";
import { heldBytesPerToken } from "../src/model/kvCache.js";
import { stderrLogger } from "../src/util/log.js";
import { Tensor } from "../src/tensor/tensor.js";
import { hbmBound } from "./hbm.js";


/** Bytes of every tensor reachable from `x` (weights as stored: bf16 2, float32 4). */
function tensorBytes(x: unknown, seen = new Set<unknown>()): number {
  if (!x || typeof x !== "object" || seen.has(x)) return 0;
  seen.add(x);
  if (x instanceof Tensor) return x.size * (x.dtype === "bf16" ? 2 : 4);
  return Object.values(x).reduce((n: number, v) => n + tensorBytes(v, seen), 0);
}

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const dirs = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const device = opt("device", "cuda") as DeviceName;
const contexts = opt("contexts", "1024,4096,16384").split(",").map(Number);
const batches = opt("batches", "1,32").split(",").map(Number);
const steps = Number(opt("steps", "32"));
const repeats = Number(opt("repeats", "3"));
if (!Number.isInteger(repeats) || repeats < 1 || !Number.isInteger(steps) || steps < 1) throw new Error(`--steps ${steps} --repeats ${repeats}: each must be a whole number ≥ 1`);
// The cache as stored on the device: f32, bf16 (half the bytes, read by the bf16 kernels), or int8/int4
// (quantized rows with their scales, dequantized for the bf16 kernels each step).
const kvCache = checkKvCacheDtype(opt("kv-cache", "f32"));
// --graphs 0: every step op by op (the comparison for a recorded step, DecodeSession).
const graphs = opt("graphs", "1") !== "0";
// --readback ids (default): each step's next tokens are the rows' arg-max taken on the device where the
// backend can (B ids come back, as generate and serve do for greedy decoding, and as HF's peer does);
// logits: the whole [B, V] logits come back and the host picks (what every step did before).
// A list (ids,logits) times each in turn on the same caches, a row each.
const readbacks = opt("readback", "ids").split(",");
if (!readbacks.every((r) => r === "ids" || r === "logits")) throw new Error(`--readback ${readbacks}: ids, logits or both`);
const backend = selectBackend(device, stderrLogger);
// Without a device arg-max (the CPU backends) "ids" would time the logits path under another name.
if (readbacks.includes("ids") && !backend.rowArgmax && readbacks.length > 1) throw new Error(`--readback ${readbacks}: the ${backend.name} backend picks on the host either way; pass one`);

function rand(n: number, vocab: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return Int32Array.from({ length: n }, () => ((s = (s * 1664525 + 1013904223) >>> 0) % (vocab - 3)) + 3);
}

const hbm = hbmBound(backend instanceof CudaBackend ? backend.info : "a CPU");
console.log(`| model | attention | context | batch | KV elements/token (all layers) | KV cache, f32 storage | KV cache, bf16 | decode tokens/s | % of HBM bound (${hbm.label}) |`);
console.log(`| --- | --- | --- | --- | --- | --- | --- | --- | --- |`);
for (const dir of dirs) {
  const { model, config } = loadModel(dir, { backend });
  const V = config.vocabSize;
  const { embed: _gathered, ...read } = model.weights;
  const weightBytes = tensorBytes(read); // the LM head is counted even when it is the (tied) embedding
  for (const ctx of contexts) {
    // Elements per token from a one-token cache.
    const probe = model.newCache();
    model.forward(rand(1, V, 7), probe);
    const perToken = probe.elements;
    for (const B of batches) {
      const bytes32 = perToken * 4 * ctx * B;
      // What the caches hold on this backend (quantized rows: values and scales, padded).
      const stored = heldBytesPerToken(config, backend, kvCache) * ctx * B;
      if (backend instanceof CudaBackend) await backend.reclaim();
      const mem = backend instanceof CudaBackend ? backend.memory() : null;
      // Free on the device plus what our pool caches (freed buffers are kept for reuse, not returned to the driver).
      const avail = mem ? mem.total - mem.live - 2 * 2 ** 30 : Infinity;
      const size = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
      const kind = (config.attention.kind === "mla" ? `mla, ${[...new Set(Array.from({ length: config.layers }, (_, l) => absorbForm(config, l)))].join("/")} absorption` : config.attention.kind) + (kvCache !== "f32" ? `, ${kvCache} cache` : "");
      // `how`: how the steps ran, added to the attention column once known.
      const row = (how = "") => `| ${dir.split("/").pop()} | ${kind}${how} | ${ctx} | ${B} | ${perToken} | ${size(bytes32)} | ${size(bytes32 / 2)} |`;
      // Each cache grows in steps of up to 1024 rows (DeviceRowStore.reserve), plus room for activations.
      if ((stored * (ctx + Math.min(ctx, 1024))) / ctx + 2 ** 30 > avail) {
        console.log(`${row()} does not fit (${(avail / 2 ** 30).toFixed(1)} GiB left beside the weights) | |`);
        continue;
      }
      let session: DecodeSession | null = null;
      try {
        // Room for the prefill and every step (the clones keep it): no cache moves while timed.
        const first = model.newCache(kvCache, { capacity: ctx + readbacks.length * repeats * steps + 2 });
        model.forward(rand(ctx, V, 11), first).toArray();
        const caches = [first];
        for (let b = 1; b < B; b++) caches.push(first.clone());
        if (backend instanceof CudaBackend) await backend.reclaim();
        let tok: Int32Array = new Int32Array(B).fill(5);
        session = new DecodeSession(model, caches, { graphs });
        let readback = readbacks[0]!;
        const step = () => {
          const out = session!.step(tok);
          if (readback === "ids" && backend.rowArgmax) {
            tok = backend.rowArgmax(out);
            return;
          }
          const logits = out.toArray();
          // Next tokens from the logits (so each step depends on the previous one, as in real decoding).
          tok = Int32Array.from({ length: B }, (_, b) => 3 + (logits.subarray(b * V, b * V + 64).indexOf(Math.max(...logits.subarray(b * V, b * V + 64))) % 60));
        };
        step(); // the first step builds the absorbed projections
        step(); // the second records the step where it can
        // `repeats` windows of `steps` steps: the median window's rate, and the range (a machine that
        // is busy elsewhere for a moment shows as a wide range rather than a wrong number).
        for (readback of readbacks) {
          const rates: number[] = [];
          for (let r = 0; r < repeats; r++) {
            const t0 = performance.now();
            for (let s = 0; s < steps; s++) step();
            rates.push((steps * B) / ((performance.now() - t0) / 1000));
          }
          const how = (session.graphed ? ", CUDA graph" : ", op by op") + (readbacks.length > 1 || readback !== "ids" ? `, ${readback === "ids" && backend.rowArgmax ? "ids" : "logits"} back` : "");
          if (graphs && session.why) console.error(`${dir.split("/").pop()} ctx ${ctx} batch ${B}: op by op because ${session.why}`);
          rates.sort((x, y) => x - y);
          const median = rates[Math.floor(rates.length / 2)]!;
          const bound = (weightBytes + stored) / hbm.bytesPerS;
          const range = repeats > 1 ? ` (${rates[0]!.toFixed(0)}–${rates[rates.length - 1]!.toFixed(0)})` : "";
          console.log(`${row(how)} ${median.toFixed(1)}${range} | ${((100 * bound * median) / B).toFixed(0)}% |`);
        }
      } catch (e) {
        // The fit estimate above is rough (the absorbed projections and activations come on top): say so and go on.
        if ((e as { code?: string }).code !== "OUT_OF_MEMORY") throw e;
        console.log(`${row()} out of GPU memory while decoding | |`);
      } finally {
        session?.dispose(); // its recorded step and scratch, before the next row's caches
        session = null;
      }
      await new Promise((r) => setImmediate(r)); // lets freed device buffers be reclaimed
    }
  }
}
