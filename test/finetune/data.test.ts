/**
 * Training data: the token stream is the documents' ids joined by EOS; with a cache folder a file is
 * tokenized once (the second load needs no tokenizing at all) and again when the file changes.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { checkDataFile, loadTrainingData, type DataOptions } from "../../src/finetune/data.js";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const tok = loadTokenizer(path.join(MODELS, "stories260K"));
const opts: DataOptions = { valFraction: 0.1, seq: 32, bos: 1, eos: 2 };
const stream = (d: { train: Int32Array; val: Int32Array }, all: number) => [...d.train, ...d.val].slice(0, all);

test("the stream is each document's ids joined by EOS, across .jsonl rows and files, split into train and validation", async () => {
  const dir = tmpDir();
  const docs = ["Once upon a time, there was a cat.", " It sat.\nThen it ran.", "", "The end."];
  const jsonl = path.join(dir, "d.jsonl");
  fs.writeFileSync(jsonl, docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
  const txt = path.join(FIXTURES, "text", "tinystories.txt");
  const want = [...docs.filter((d) => d), fs.readFileSync(txt, "utf8")].map((d) => tok.encode(d)).reduce((a, b) => [...a, 2, ...b]);
  const d = await loadTrainingData(tok, [jsonl, txt], opts);
  const cut = Math.floor(want.length * 0.9);
  assert.deepEqual([...d.train], want.slice(0, cut));
  assert.deepEqual([...d.val], want.slice(cut));
  assert.equal(d.sequences, Math.floor(cut / 31));
});

test("a token cache: written once (no partial files), read back without tokenizing, renewed when the data file changes", async () => {
  const dir = tmpDir();
  const cache = path.join(dir, "tokens");
  const file = path.join(dir, "corpus.txt");
  fs.copyFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), file);
  const first = await loadTrainingData(tok, [file], { ...opts, cacheDir: cache });
  const files = fs.readdirSync(cache);
  assert.equal(files.length, 1, `one cache file, nothing else: ${files.join(", ")}`);
  assert.match(files[0]!, /^[0-9a-f]{32}\.i32$/);
  const all = first.train.length + first.val.length;
  assert.equal(fs.statSync(path.join(cache, files[0]!)).size, 4 * all + 16, "the ids and a 16-byte trailer that checks them");

  const refusing: TextTokenizer = {
    ...tok,
    encode: () => assert.fail("tokenized although the stream is cached"),
    encodeContinuation: () => assert.fail("tokenized although the stream is cached"),
  };
  const lines: string[] = [];
  const again = await loadTrainingData(refusing, [file], { ...opts, cacheDir: cache, logger: { info: (m) => lines.push(m), warn: () => {} } });
  assert.deepEqual(stream(again, all), stream(first, all));
  assert.match(lines.join("\n"), /corpus\.txt: [\d,]+ tokens from the token cache/);

  // Cut short or changed, the cache fails its check: the data is tokenized again (not read as a shorter stream).
  const cacheFile = path.join(cache, files[0]!);
  const good = fs.readFileSync(cacheFile);
  for (const damaged of [good.subarray(0, 100), Buffer.concat([Buffer.from([1, 0, 0, 0]), good.subarray(4)])]) {
    fs.writeFileSync(cacheFile, damaged);
    const warned: string[] = [];
    const redone = await loadTrainingData(tok, [file], { ...opts, cacheDir: cache, logger: { info: () => {}, warn: (m) => warned.push(m) } });
    assert.deepEqual(stream(redone, all), stream(first, all));
    assert.match(warned.join("\n"), /the token cache fails its check \(cut short or changed\): tokenizing \S*corpus\.txt again/);
    assert.deepEqual(fs.readFileSync(cacheFile), good, "written anew");
  }

  // Same size, new content and mtime: a new key, so the old stream is not used.
  const text = fs.readFileSync(file, "utf8");
  fs.writeFileSync(file, text.replace("Spot", "Spam"));
  const later = new Date(Date.now() + 10_000);
  fs.utimesSync(file, later, later);
  await assert.rejects(loadTrainingData(refusing, [file], { ...opts, cacheDir: cache }), /tokenized although the stream is cached/);
  const changed = await loadTrainingData(tok, [file], { ...opts, cacheDir: cache });
  assert.notDeepEqual(stream(changed, 8), stream(first, 8));
  assert.equal(fs.readdirSync(cache).length, 2);
  // Other joining settings are another stream too.
  await assert.rejects(loadTrainingData(refusing, [file], { ...opts, eos: null, cacheDir: cache }), /tokenized although/);
});

test("a large file is tokenized in worker threads with the single-thread stream", async () => {
  const file = path.join(FIXTURES, "text", "tinystories_25k.txt");
  const single = await loadTrainingData(tok, [file], opts);
  const parallel = await loadTrainingData(tok, [file], { ...opts, encode: { pieceChars: 512, parallelAbove: 0, workers: 2 } });
  assert.deepEqual(parallel, single);
});

test("a pipe as --data (--data <(xz -dc corpus.xz)) is taken: not refused as empty, none of its bytes read by the check", { skip: process.platform === "win32" ? "no mkfifo" : false }, () => {
  const fifo = path.join(tmpDir(), "pipe");
  execFileSync("mkfifo", [fifo]);
  checkDataFile(fifo); // a read would block: no writer is attached
  assert.throws(() => checkDataFile(path.join(FIXTURES, "text")), /--data .* is a folder/);
});

test("too few training tokens for one sequence: where --fraction or --val-fraction took them, the message says how many each took", async () => {
  const txt = path.join(FIXTURES, "text", "tinystories.txt");
  await assert.rejects(loadTrainingData(tok, [txt], { ...opts, seq: 256, fraction: 0.01 }), (e: Error) =>
    /^the training part of the data has \d+ tokens, fewer than one sequence of 255 \(\+BOS\) \(the files hold \d+ tokens; --fraction 0\.01 keeps \d+ of its \d+, --val-fraction 0\.1 holds out \d+\)\n\s*hint: pass more data or a smaller --seq, or a larger --fraction$/.test(e.message));
  const short = path.join(tmpDir(), "short.txt");
  fs.writeFileSync(short, "Once upon a time there was a cat.");
  await assert.rejects(loadTrainingData(tok, [short], { ...opts, valFraction: 0 }), (e: Error) => /fewer than one sequence of 31 \(\+BOS\)\n\s*hint: pass more data or a smaller --seq$/.test(e.message));
});

test("one file given twice as --data, by any path to it, is refused naming both (its text would train twice and sit in the validation tail)", async () => {
  const dir = tmpDir();
  const file = path.join(dir, "a.txt");
  fs.writeFileSync(file, "Once upon a time there was a cat. ".repeat(20));
  fs.symlinkSync(file, path.join(dir, "link.txt"));
  for (const again of [`${dir}/./a.txt`, path.join(dir, "link.txt")])
    await assert.rejects(loadTrainingData(tok, [file, again], opts), (e: Error) => e.message.startsWith(`--data ${again} is the same file as --data ${file}\n  hint: give each file once`));
});
