/**
 * A prompt chunk of T tokens on an MLA cache already holding S: the absorbed form (attention in the
 * latent dims) against the plain one (the cached latents up-projected), and the form the model picks
 * (absorbedCheaper), per (S, T). This is what a server's chunked prefill and its prefix-cache hits run.
 * Each row: the median of --repeats runs on copies of one prefilled cache, ms, downloads of the
 * last row's logits included (what a server reads).
 *
 * Run: node dist/bench/prefill-chunk.js MLA_DIR [--device cuda] [--kv-cache bf16] [--shapes 1024x512,1024x64,16384x16] [--repeats 3]
 */
import { selectBackend, type DeviceName } from "../src/backends/select.js";
import { loadModel } from "../src/model/llama.js";
import { absorbedCheaper } from "../src/model/attention/mla.js";
import type { MlaAttention } from "../src/model/config.js";
import { stderrLogger } from "../src/util/log.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const dir = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!dir) throw new Error("usage: node dist/bench/prefill-chunk.js MLA_DIR [--device cuda] [--kv-cache bf16] [--shapes SxT,…] [--repeats 3]");
const backend = selectBackend(opt("device", "cuda") as DeviceName, stderrLogger);
const kvCache = opt("kv-cache", "bf16") as "f32" | "bf16";
const shapes = opt("shapes", "1024x512,1024x64,16384x16").split(",").map((s) => s.split("x").map(Number) as [number, number]);
const repeats = Number(opt("repeats", "3"));
const { model, config } = loadModel(dir, { backend });
if (config.attention.kind !== "mla") throw new Error(`${dir} is not an MLA model`);
const split = (config.attention as MlaAttention).splits[0]!;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

console.log(`${new Date().toISOString().slice(0, 10)}, ${backend.name}, ${dir}, ${kvCache} cache`);
console.log("| cached S | chunk T | absorbed (ms) | plain (ms) | picked |");
console.log("| --- | --- | --- | --- | --- |");
for (const [S, T] of shapes) {
  const ids = Int32Array.from({ length: S + T }, (_, i) => 3 + ((i * 7919) % (config.vocabSize - 3)));
  const base = model.newCache(kvCache, { capacity: S + T });
  model.prefill(ids.subarray(0, S), base).dispose();
  const time = (absorb: boolean): number => {
    const runs: number[] = [];
    for (let r = 0; r <= repeats; r++) {
      const c = base.clone({ capacity: S + T });
      const t0 = performance.now();
      model.prefill(ids.subarray(S), c, { absorb }).toArray();
      if (r > 0) runs.push(performance.now() - t0); // the first builds what later runs reuse
      c.dispose();
    }
    return median(runs);
  };
  const absorbed = time(true), plain = time(false);
  const picked = absorbedCheaper(config, split.latentDim, split.ropePairs, T, S + T, backend.latentAttentionCost) ? "absorbed" : "plain";
  console.log(`| ${S} | ${T} | ${absorbed.toFixed(2)} | ${plain.toFixed(2)} | ${picked} |`);
  base.dispose();
}
