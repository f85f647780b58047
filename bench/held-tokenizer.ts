/**
 * serve's long texts tokenized off the event loop: encodeUpToOffThread and decodeOffThread with the
 * tokenizer's held worker (started by the first long text, kept for the next), each call timed, beside
 * the same encode and decode on the calling thread. The first call pays the worker's start and the
 * tokenizer's load; later calls should cost about what the calling thread takes.
 * Run: node dist/bench/held-tokenizer.js [MODEL_DIR] [--calls 4] [--chars 69000]
 */
import path from "node:path";
import { decodeOffThread } from "../src/io/decodeOffThread.js";
import { encodeUpToOffThread } from "../src/io/encodeOffThread.js";
import { heldThreadsStarted } from "../src/io/heldTokenizerThreads.js";
import { loadTokenizer } from "../src/io/tokenizer.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const dir = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--")) ?? path.join("..", "shared", "models", "mha26m-debian");
const calls = Number(opt("calls", "4"));
const chars = Number(opt("chars", "69000"));
const tok = loadTokenizer(dir);
// One line with runs of spaces (nothing encodeLong could cut at): what serve sends to the worker.
const text = "Once upon a time,    a little fox found a shiny red ball.  ".repeat(Math.ceil(chars / 59)).slice(0, chars);
const ids = tok.encode(text, { addSpecialTokens: true });
// Past the decode threshold: the text's ids repeated to 70,000 or more.
const many = Array.from({ length: Math.ceil(70_000 / ids.length) }, () => ids).flat();
// serve's thresholds: texts past 65,536 characters, decodes past 65,536 ids, go to the worker.
const enc = { max: 1e7, addSpecialTokens: true, offThreadAbove: 65_536 };
const dec = { skipSpecialTokens: false, offThreadAbove: 65_536 };
const ms = async (f: () => unknown) => {
  const t0 = performance.now();
  await f();
  return +(performance.now() - t0).toFixed(1);
};
console.log(`${new Date().toISOString().slice(0, 10)}, node ${process.version}, ${path.basename(path.resolve(dir))}: ${text.length} characters (${ids.length} ids) encoded, ${many.length} ids decoded`);
console.log("| call | encodeUpToOffThread (ms) | decodeOffThread (ms) | encode on this thread (ms) | decode on this thread (ms) | workers started |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (let c = 1; c <= calls; c++) {
  const e = await ms(() => encodeUpToOffThread(tok, text, enc));
  const d = await ms(() => decodeOffThread(tok, many, dec));
  const eh = await ms(() => tok.encode(text, { addSpecialTokens: true }));
  const dh = await ms(() => tok.decode(many));
  console.log(`| ${c} | ${e} | ${d} | ${eh} | ${dh} | ${heldThreadsStarted()} |`);
}
