/**
 * Batched decode attention alone, per layer, on the GPU: the one native call of decode_batch.cu
 * beside one attention call per sequence from TypeScript (MHA2MLA_DECODE_BATCH=rows, the form before
 * it), for MHA and MLA at the llama2-7b shape (H 32, Dh 128; MLA rank 64, rope pairs 8: latent 2048,
 * rope dims 16 per KV head). Every sequence reads its own cache (one buffer per sequence, all with the
 * same contents: the timing does not depend on them). Prints ms per layer call and the share of the
 * HBM bound (cache bytes over the card's peak bandwidth, bench/hbm.json).
 * MLA on bf16 caches runs twice: the fused latent kernel (latent_decode.cu, the default) and the two cuBLAS
 * GEMMs it replaced (MHA2MLA_LATENT_DECODE=gemm), with the largest difference of their outputs.
 * Run: node dist/bench/decode-attention.js [--contexts 4096,16384] [--batches 1,8,32] [--reps 20] [--kinds mha,mla] [--f32] [--rows]
 * (--f32 adds float32 caches, --rows one call per sequence)
 */
import { openCuda } from "./cudaBench.js";
import type { Tensor } from "../src/tensor/tensor.js";
import { hbmBound } from "./hbm.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const contexts = opt("contexts", "4096,16384").split(",").map(Number);
const batches = opt("batches", "1,8,32").split(",").map(Number);
const reps = Number(opt("reps", "20"));
const kinds = opt("kinds", "mha,mla").split(",") as ("mha" | "mla")[];
for (const k of kinds) if (k !== "mha" && k !== "mla") throw new Error(`--kinds: ${k} is not mha or mla`);
const withRows = args.includes("--rows");
const withF32 = args.includes("--f32");
const { backend: B0, sync } = openCuda();
const H = 32, Dh = 128, Hkv = 32, L = 2048, Dr = 16;
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);

const hbm = hbmBound(B0.info);
console.log(`| attention | context | batch | route | ms per layer call | % of HBM bound (${hbm.label}) |`);
console.log("| --- | --- | --- | --- | --- | --- |");
for (const S of contexts)
  for (const B of batches) {
    const positions = new Int32Array(B).fill(S - 1);
    const opts = { scale: 1 / Math.sqrt(Dh), positions, window: null };
    for (const kind of kinds) {
      const row = kind === "mha" ? 2 * Hkv * Dh : L + Hkv * Dr;
      if (B * S * row * 6 > 60 * 2 ** 30) continue;
      const q = B0.upload(rand(B * H * Dh), [B, H, Dh]);
      const qr = B0.upload(rand(B * H * Dr), [B, H, Dr]), qc = B0.upload(rand(B * H * L), [B, H, L]);
      const copies = (shape: number[]) => {
        const one = B0.upload(rand(shape.reduce((x, y) => x * y, 1)), shape);
        return Array.from({ length: B }, (_, b) => {
          if (b === 0) return one;
          const copy = B0.empty(shape, "a benchmark cache");
          B0.copyElements(copy, 0, one, 0, one.size);
          return copy;
        });
      };
      const k = kind === "mha" ? copies([S, Hkv, Dh]) : [];
      const v = kind === "mha" ? copies([S, Hkv, Dh]) : [];
      const kr = kind === "mla" ? copies([S, Hkv, Dr]) : [];
      const c = kind === "mla" ? copies([S, L]) : [];
      // bf16 copies of the caches: the `--kv-cache bf16` storage, read by bf16 tensor-core GEMMs.
      const half = (ts: Tensor[]) => ts.map((t) => {
        const h = B0.empty(t.shape, "a bf16 benchmark cache", 1);
        B0.training.cast(t, h);
        return h;
      });
      const [kh, vh, krh, ch] = [half(k), half(v), half(kr), half(c)];
      let bf16 = false;
      const call = () => (kind === "mha" ? B0.attentionDecodeBatch(q, bf16 ? kh : k, bf16 ? vh : v, opts) : B0.latentAttentionDecodeBatch(qr, bf16 ? krh : kr, qc, bf16 ? ch : c, opts)).dispose();
      // MLA on bf16 caches takes the fused latent kernel (latent_decode.cu) unless MHA2MLA_LATENT_DECODE=gemm.
      const routes = [...(withF32 ? ["batched"] : []), "batched, bf16 cache, cuBLAS", ...(kind === "mla" ? ["batched, bf16 cache, fused"] : []), ...(withRows ? ["rows"] : [])];
      const outputs: ArrayLike<number>[] = [];
      for (const route of routes) {
        process.env["MHA2MLA_DECODE_BATCH"] = route === "rows" ? "rows" : "";
        process.env["MHA2MLA_LATENT_DECODE"] = route.endsWith("cuBLAS") ? "gemm" : "";
        bf16 = route.includes("bf16 cache");
        // The warm-up call; on bf16 caches its output is kept to compare the two routes.
        if (bf16) {
          const y = kind === "mha" ? B0.attentionDecodeBatch(q, kh, vh, opts) : B0.latentAttentionDecodeBatch(qr, krh, qc, ch, opts);
          outputs.push(y.toArray());
          y.dispose();
        } else call();
        sync();
        const t0 = performance.now();
        for (let r = 0; r < reps; r++) call();
        sync();
        const ms = (performance.now() - t0) / reps;
        const bound = (B * S * row * (bf16 ? 2 : 4)) / hbm.bytesPerS;
        console.log(`| ${kind} | ${S} | ${B} | ${route} | ${ms.toFixed(3)} | ${((100 * bound) / (ms / 1000)).toFixed(0)}% |`);
      }
      if (outputs.length === 2) {
        let d = 0, m = 0;
        for (let i = 0; i < outputs[0]!.length; i++) {
          d = Math.max(d, Math.abs(outputs[0]![i]! - outputs[1]![i]!));
          m = Math.max(m, Math.abs(outputs[0]![i]!));
        }
        console.log(`|  |  |  | fused vs cuBLAS on the bf16 cache: max abs diff ${d.toExponential(2)} of max ${m.toFixed(3)} |  |  |`);
      }
      delete process.env["MHA2MLA_DECODE_BATCH"];
      delete process.env["MHA2MLA_LATENT_DECODE"];
      for (const t of [q, qr, qc, ...k, ...v, ...kr, ...c, ...kh, ...vh, ...krh, ...ch]) t.dispose();
    }
  }
