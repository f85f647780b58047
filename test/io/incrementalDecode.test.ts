/**
 * IncrementalDecoder: the pieces handed out as ids arrive add up to the decode of all the ids, byte
 * for byte (generate streams them to stdout and promises the text it printed at the end), whatever
 * the ids: byte tokens that do or do not make characters, special tokens, SentencePiece and
 * byte-level decoders, a tokenizer that cleans up spaces; and they come as the ids come.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { IncrementalDecoder } from "../../src/io/incrementalDecode.js";
import { FIXTURES, MODELS, SHARED, seededRand, tmpDir } from "../helpers.js";

const stories = loadTokenizer(path.join(MODELS, "stories260K"));

/** Each id pushed alone (after `first`, pushed at once); the pieces, the rest finish() gave, and the whole decode. */
function run(tok: TextTokenizer, ids: number[], opts: { skipSpecialTokens?: boolean; first?: number } = {}) {
  const d = new IncrementalDecoder(tok, { skipSpecialTokens: opts.skipSpecialTokens ?? false });
  const first = opts.first ?? 0;
  const pieces = [d.push(ids.slice(0, first)), ...ids.slice(first).map((id) => d.push([id]))];
  const end = d.finish();
  return { pieces, ...end, whole: tok.decode(ids, { skipSpecialTokens: opts.skipSpecialTokens ?? false }) };
}

/** A piece is text stdout can write as it is: no half of a surrogate pair (UTF-8 would turn it into U+FFFD). */
const wellFormed = (s: string) => Buffer.from(s, "utf8").toString("utf8") === s;

function assertAddsUp(r: ReturnType<typeof run>, what: string): void {
  assert.equal(r.exact, true, `${what}: the pieces begin the whole decode`);
  assert.equal(r.pieces.join("") + r.rest, r.whole, what);
  for (const p of r.pieces) assert.ok(wellFormed(p), `${what}: piece ${JSON.stringify(p)}`);
}

test("text spread over byte tokens comes whole and as it is generated, never as U+FFFD or half a character", () => {
  const text = "Once upon a time, café ☕ naïve – 日本 😀 ’quoted’ and\nmore.";
  const ids = stories.encode(text, { addSpecialTokens: false });
  assert.ok(ids.length > text.length / 2, "the text is spread over byte tokens");
  const r = run(stories, ids);
  assertAddsUp(r, "unicode text");
  assert.equal(r.whole, text);
  for (const p of r.pieces) assert.ok(!p.includes("\uFFFD"), `piece ${JSON.stringify(p)}`);
  // Handed out as it comes: all but the last few characters before finish().
  assert.ok(r.rest.length <= 4, `held back to the end: ${JSON.stringify(r.rest)}`);
  assert.ok(r.pieces.filter((p) => p).length > 10);
});

test("random ids (special tokens, bytes that make no character) add up exactly, with and without special tokens", () => {
  const rand = seededRand(7, Float64Array);
  for (let k = 0; k < 40; k++) {
    const n = 1 + Math.floor(((rand(1)[0]! + 1) / 2) * 120);
    const ids = Array.from(rand(n), (x) => Math.floor(((x + 1) / 2) * stories.vocabSize));
    for (const skipSpecialTokens of [false, true]) assertAddsUp(run(stories, ids, { skipSpecialTokens, first: k % 3 === 0 ? Math.floor(n / 2) : 0 }), `sequence ${k} ${ids.join(",")}`);
  }
});

test("a long text keeps the decoded window short and still adds up (the anchor moves on)", () => {
  const text = fs.readFileSync(path.join(FIXTURES, "text", "tinystories.txt"), "utf8").slice(0, 6000);
  const ids = stories.encode(text, { addSpecialTokens: false });
  let longest = 0;
  const counting: TextTokenizer = { ...stories, decode: (x, o) => ((longest = Math.max(longest, x.length)), stories.decode(x, o)) };
  const d = new IncrementalDecoder(counting);
  const pieces = ids.map((id) => d.push([id]));
  assert.ok(longest < 40, `each push decodes a short window (longest ${longest} ids)`);
  const end = d.finish();
  assert.equal(pieces.join("") + end.rest, stories.decode(ids));
  // The prompt pushed at once (as generate echoes it), then the rest one by one.
  assertAddsUp(run(stories, ids, { first: 300 }), "prompt then continuation");
});

/** A byte-level BPE tokenizer (GPT-2, Llama 3) with no merges: one id per byte; `cleans`: its config asks for the space clean-up. */
function byteLevelTokenizer(cleans = false): TextTokenizer {
  const printable = [...range(33, 127), ...range(161, 173), ...range(174, 256)];
  const vocab: Record<string, number> = {};
  let extra = 0;
  for (let b = 0; b < 256; b++) vocab[String.fromCodePoint(printable.includes(b) ? b : 256 + extra++)] = b;
  const dir = tmpDir();
  const level = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: level, post_processor: null, decoder: level, model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] } }));
  if (cleans) fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify({ clean_up_tokenization_spaces: true }));
  return loadTokenizer(dir);
}

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a }, (_, i) => a + i);
}

test("a byte-level tokenizer: random bytes and UTF-8 text add up exactly", () => {
  const tok = byteLevelTokenizer();
  const text = "naïve 日本 😀 end";
  const ids = [...Buffer.from(text, "utf8")];
  assert.equal(tok.decode(ids), text, "the test tokenizer is byte-level");
  const r = run(tok, ids);
  assertAddsUp(r, "utf-8 text");
  for (const p of r.pieces) assert.ok(!p.includes("\uFFFD"), `piece ${JSON.stringify(p)}`);
  const rand = seededRand(11, Float64Array);
  for (let k = 0; k < 30; k++) {
    // Mostly multi-byte lead and continuation bytes, so characters break off and complete at random.
    const ids = Array.from(rand(80), (x) => (x > 0.3 ? 0x80 + Math.floor(((x - 0.3) / 0.7) * 0x7f) : Math.floor(((x + 1) / 1.3) * 0x80)));
    assertAddsUp(run(tok, ids), `bytes ${ids.join(",")}`);
  }
});

/** A copy of the tokenizer files in `dir` whose tokenizer_config.json sets clean_up_tokenization_spaces: true. */
function cleaningCopy(dir: string): TextTokenizer {
  const copy = tmpDir();
  fs.copyFileSync(path.join(dir, "tokenizer.json"), path.join(copy, "tokenizer.json"));
  const cfgFile = path.join(dir, "tokenizer_config.json");
  const cfg = fs.existsSync(cfgFile) ? JSON.parse(fs.readFileSync(cfgFile, "utf8")) : {};
  fs.writeFileSync(path.join(copy, "tokenizer_config.json"), JSON.stringify({ ...cfg, clean_up_tokenization_spaces: true }));
  const tok = loadTokenizer(copy);
  assert.equal(tok.cleansUpSpaces, true);
  return tok;
}

const llama2 = path.join(SHARED, "models", "mha26m-debian");

test("a tokenizer that cleans up spaces (\" .\" → \".\", \" n't\" → \"n't\") still adds up: only an end it may still clean waits", () => {
  const tok = cleaningCopy(path.join(MODELS, "stories260K"));
  const text = "I do n't know . He 's here , is n't he ? Yes ! We 've seen ' it ' a .";
  const ids = stories.encode(text, { addSpecialTokens: false });
  assert.equal(tok.decode(ids), "I don't know. He's here, isn't he? Yes! We've seen'it'a.", "the clean-up is on");
  assertAddsUp(run(tok, ids), "cleaned-up text");
  // " n" then "'" then "t": held until "t" shows it is " n't", then "n't" at once; a word is not held.
  const dont = stories.encode("I do n't play", { addSpecialTokens: false });
  assert.deepEqual(dont.map((id) => tok.idToToken!(id)), ["▁I", "▁do", "▁n", "'", "t", "▁play"]);
  assert.deepEqual(run(tok, dont).pieces, ["", "I", " do", "", "", "n't", " play"]);
  // Without the clean-up nothing waits for it: " n" goes out as it comes.
  assert.deepEqual(run(stories, dont).pieces, ["", "I", " do", " n", "'", "t", " play"]);
});

test("property: random ids of each bundled tokenizer, clean-up on and off, pieces add up to the whole decode", () => {
  const tokenizers: [string, TextTokenizer][] = [
    ["stories260K", stories],
    ["stories260K cleaning", cleaningCopy(path.join(MODELS, "stories260K"))],
    ["stories260K-mha cleaning", cleaningCopy(path.join(MODELS, "stories260K-mha"))],
  ];
  if (fs.existsSync(llama2)) tokenizers.push(["Llama 2", loadTokenizer(llama2)], ["Llama 2 cleaning", cleaningCopy(llama2)]);
  const rand = seededRand(23, Float64Array);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(((rand(1)[0]! + 1) / 2) * xs.length)]!;
  for (const [name, tok] of tokenizers) {
    // Half the ids from the pieces the clean-up reads (so its matches cross token boundaries), half anywhere.
    const pieces = tok.encode("x . , ? ! ' n't 's 've 're 'm n' 'v 'r do is We ' re", { addSpecialTokens: false });
    for (let k = 0; k < 40; k++) {
      const ids = Array.from({ length: 1 + Math.floor(((rand(1)[0]! + 1) / 2) * 60) }, () => (rand(1)[0]! > 0 ? pick(pieces) : Math.floor(((rand(1)[0]! + 1) / 2) * tok.vocabSize)));
      for (const skipSpecialTokens of [false, true]) assertAddsUp(run(tok, ids, { skipSpecialTokens, first: k % 4 === 0 ? Math.floor(ids.length / 2) : 0 }), `${name} sequence ${k} ${ids.join(",")}`);
    }
  }
  // A byte-level tokenizer (Llama 3's kind, whose config asks for the clean-up) one id per byte.
  const bytes = byteLevelTokenizer(true);
  const alphabet = [...Buffer.from(" .,?!'ntmsvre\u00e9", "utf8")];
  for (let k = 0; k < 30; k++) assertAddsUp(run(bytes, Array.from({ length: 60 }, () => pick(alphabet))), `byte-level sequence ${k}`);
});
