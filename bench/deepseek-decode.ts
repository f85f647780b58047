/**
 * Decode of a deepseek_v3 folder in our runtime, the two forms side by side: kv_b absorbed
 * (DeepseekDecoder, the default: a step reads the cached latents and the shared rope key) and the
 * plain form (`absorb: false`: every step up-projects the whole cache through kv_b). Prefills
 * `--context` tokens, then times `--steps` single-token steps of each form from the same cache state.
 * Prints ms per token. Run: node dist/bench/deepseek-decode.js MODEL [--contexts 256,1024]
 * [--steps 16] [--device cpu|cuda|…]
 */
import { loadModel } from "../src/model/llama.js";
import { selectBackend, type DeviceName } from "../src/backends/select.js";
import { silentLogger } from "../src/util/log.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1]! : dflt);
const dir = args[0]!;
const contexts = opt("contexts", "256,1024").split(",").map(Number);
const steps = Number(opt("steps", "16"));
const { model, config } = loadModel(dir, { backend: selectBackend(opt("device", "auto") as DeviceName, silentLogger) });
if (config.attention.kind !== "deepseek") throw new Error(`${dir} is not a deepseek_v3 folder`);
const V = config.vocabSize;
console.log(`${dir}: kv_lora_rank ${config.attention.kvLoraRank}, rope dim ${config.attention.ropeDim}, ${config.layers} layers`);
console.log("| context | absorbed (ms/token) | plain, up-projecting the cache (ms/token) | plain / absorbed |");
console.log("| --- | --- | --- | --- |");
for (const T of contexts) {
  const prompt = Int32Array.from({ length: T }, (_, i) => 3 + ((i * 7919) % (V - 3)));
  const time = (absorb: boolean) => {
    const cache = model.newCache();
    model.forward(prompt, cache).dispose();
    const t0 = performance.now();
    for (let s = 0; s < steps; s++) model.forward(Int32Array.of(3 + s), cache, absorb ? {} : { absorb: false }).dispose();
    return (performance.now() - t0) / steps;
  };
  time(true); // warm-up
  const [a, p] = [time(true), time(false)];
  console.log(`| ${T} | ${a.toFixed(2)} | ${p.toFixed(2)} | ${(p / a).toFixed(1)}× |`);
}
