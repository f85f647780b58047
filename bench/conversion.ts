/**
 * Conversion quality on the bundled models, beside the PyTorch reference conversion
 * (fixtures/golden/conversion.json from test/golden/make_conversion_golden.py), and weight SVD vs
 * activation-aware SVD. Prints a Markdown section for docs/benchmarks.md.
 * Run: npm run build && node dist/bench/conversion.js
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { convert } from "../src/convert/pipeline.js";
import { loadModel } from "../src/model/llama.js";
import { perplexity, readText, tokenizeForEval } from "../src/eval/perplexity.js";
import { packageRoot } from "../src/io/modelDir.js";

const root = packageRoot();
const golden = JSON.parse(fs.readFileSync(path.join(root, "fixtures/golden/conversion.json"), "utf8"));
const evalFile = path.join(root, golden.eval.file);
const calibFile = path.join(root, golden.calib.file);
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-bench-"));

async function convertedPpl(model: string, o: Parameters<typeof convert>[1], text = evalFile): Promise<{ ppl: number; seconds: number }> {
  const out = path.join(scratch, "m");
  const t0 = performance.now();
  await convert(path.join(root, "fixtures/models", model), { ...o, out, force: true, progress: null });
  const seconds = (performance.now() - t0) / 1000;
  const lm = loadModel(out);
  return { ppl: (await perplexity(lm.model, tokenizeForEval(lm.tokenizer, readText(text)), { ctx: 256, progress: null })).ppl, seconds };
}

console.log(`## Conversion quality (${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} cores, ${os.cpus()[0]?.model.trim()}, node ${process.version})`);
console.log(`\nCommand: \`npm run build && node dist/bench/conversion.js\`. Perplexity on \`${golden.eval.file}\` (ctx 256, no fine-tuning), joint SVD.`);
console.log(`PyTorch column: \`test/golden/make_conversion_golden.py\` (float64 torch.linalg.svd, HF model with RoPE masked), run on the GPU machine.\n`);
console.log("| model | strategy | R | rank | KV vs original | ppl (ours) | ppl (PyTorch) | Δ | convert time |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const [model, g] of Object.entries(golden.models) as [string, { settings: { strategy: "high"; rope_pairs: number; rank: number; ppl: number }[] }][]) {
  for (const s of g.settings) {
    // The window settings go with the calibration text only: convert() refuses them without it.
    const calib = s.strategy === ("2-norm" as string) ? { calib: calibFile, calibSamples: golden.calib.samples, calibLen: golden.calib.len } : {};
    const r = await convertedPpl(model, { rank: s.rank, ropePairs: s.rope_pairs, ropeStrategy: s.strategy, ...calib });
    const kvHeads = model === "stories260K" ? 4 : 8;
    const kv = (kvHeads * (2 * s.rope_pairs + s.rank)) / (2 * kvHeads * 8);
    console.log(`| ${model} | ${s.strategy} | ${s.rope_pairs} | ${s.rank} | ${(100 * kv).toFixed(2)}% | ${r.ppl.toFixed(3)} | ${s.ppl.toFixed(3)} | ${((100 * (r.ppl - s.ppl)) / s.ppl).toFixed(3)}% | ${r.seconds.toFixed(2)} s |`);
  }
}
const heldoutFile = path.join(root, "fixtures/text/tinystories_heldout.txt");
console.log(`\nWeight SVD vs activation-aware SVD (\`--svd-init activations\`, calibration \`fixtures/text/tinystories_25k.txt\`, 32 windows of 256): perplexity on \`fixtures/text/tinystories_heldout.txt\` (held out).\n`);
console.log("| model | R | rank | strategy | weights | activations |");
console.log("| --- | --- | --- | --- | --- | --- |");
const calib25k = path.join(root, "fixtures/text/tinystories_25k.txt");
for (const model of ["stories260K", "stories260K-mha"])
  for (const [R, rank] of [[1, 2], [2, 4], [1, 6]] as const) {
    // Only the activation-aware SVD reads the calibration text: convert refuses it where nothing does.
    const base = { rank, ropePairs: R, ropeStrategy: "high" as const };
    const w = await convertedPpl(model, { ...base, svdInit: "weights" }, heldoutFile);
    const a = await convertedPpl(model, { ...base, svdInit: "activations", calib: calib25k }, heldoutFile);
    console.log(`| ${model} | ${R} | ${rank} | high | ${w.ppl.toFixed(3)} | ${a.ppl.toFixed(3)} |`);
  }
fs.rmSync(scratch, { recursive: true, force: true });
