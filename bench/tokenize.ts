/**
 * Tokenizer throughput on one core: a text's first CHARS characters encoded whole (what evaluation and
 * fine-tuning data preparation do with a SentencePiece-style tokenizer: one BPE word per text) by our
 * loadTokenizer (src/io/fastBpe.ts's merge loop) and by the @huggingface/tokenizers library as it ships,
 * in the same process, with the ids compared. The peer a user would otherwise pick is the Rust tokenizers
 * behind transformers (`bench/tokenize_hf.py` runs it where Python has `tokenizers`).
 * Run: node dist/bench/tokenize.js TOKENIZER_DIR TEXT_FILE [CHARS=250000] [REPEATS=3]
 */
import fs from "node:fs";
import path from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { loadTokenizer } from "../src/io/tokenizer.js";

const [dir, file, charsArg, repeatsArg] = process.argv.slice(2);
if (!dir || !file) {
  console.error("usage: node dist/bench/tokenize.js TOKENIZER_DIR TEXT_FILE [CHARS=250000] [REPEATS=3]");
  process.exit(2);
}
const text = fs.readFileSync(file, "utf8").slice(0, Number(charsArg ?? 250_000));
const repeats = Number(repeatsArg ?? 3);
const ours = loadTokenizer(dir);
const library = new HfTokenizer(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")), {});

/** The best of `repeats` timings of `encode` over the text, and its ids. */
function time(encode: () => number[]): { ms: number; ids: number[] } {
  let ms = Infinity, ids: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    ids = encode();
    ms = Math.min(ms, performance.now() - t0);
  }
  return { ms, ids };
}
const a = time(() => ours.encode(text));
const b = time(() => library.encode(text, { add_special_tokens: false }).ids);
const row = (name: string, r: { ms: number; ids: number[] }) =>
  `| ${name} | ${r.ids.length} | ${r.ms.toFixed(0)} | ${((r.ids.length / r.ms) * 1000).toFixed(0)} | ${(Buffer.byteLength(text) / r.ms / 1000).toFixed(3)} |`;
console.log(`${path.basename(dir)} tokenizer, ${path.basename(file)}, first ${text.length} characters encoded whole, best of ${repeats}`);
console.log("| encoder | tokens | ms | tokens/s | MB/s |");
console.log("| --- | --- | --- | --- | --- |");
console.log(row("mha2mla (fast BPE merge loop)", a));
console.log(row("@huggingface/tokenizers as shipped", b));
console.log(`same ids: ${a.ids.length === b.ids.length && a.ids.every((x, i) => x === b.ids[i])}; speed-up ${(b.ms / a.ms).toFixed(2)}×`);
