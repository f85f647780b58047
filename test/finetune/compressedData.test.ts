/**
 * --data FILE.xz: decompressed in memory by the xz tool into the stream its text gives (a .jsonl.xz is
 * JSONL); with a token cache keyed by the .xz file, later loads neither decompress nor tokenize. A
 * damaged archive, a misnamed file, a missing xz tool and an empty file are refused naming the file.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { checkDataFile, loadTrainingData, type DataOptions } from "../../src/finetune/data.js";
import { finetune } from "../../src/finetune/trainer.js";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const NO_XZ = spawnSync("xz", ["--version"]).status !== 0 ? "no xz tool on this machine" : false;
const tok = loadTokenizer(path.join(MODELS, "stories260K"));
const opts: DataOptions = { valFraction: 0.1, seq: 32, bos: 1, eos: 2 };
const TEXT = path.join(FIXTURES, "text", "tinystories_25k.txt");

function xzOf(file: string, dir = tmpDir()): string {
  const out = path.join(dir, path.basename(file) + ".xz");
  fs.writeFileSync(out, spawnSync("xz", ["-c", file]).stdout);
  return out;
}

/** `work` with no xz tool on the PATH: a decompression tried fails. */
async function withoutXz<T>(work: () => Promise<T>): Promise<T> {
  const path0 = process.env["PATH"];
  process.env["PATH"] = "/nonexistent";
  try {
    return await work();
  } finally {
    process.env["PATH"] = path0;
  }
}

const refusing: TextTokenizer = { ...tok, encode: () => assert.fail("tokenized although the stream is cached"), encodeContinuation: () => assert.fail("tokenized although the stream is cached") };

test("an .xz file gives the stream of its text (.jsonl.xz: JSONL); cached by the .xz file, a later load neither decompresses nor tokenizes", { skip: NO_XZ }, async () => {
  const dir = tmpDir();
  const xz = xzOf(TEXT, dir);
  assert.deepEqual(await loadTrainingData(tok, [xz], opts), await loadTrainingData(tok, [TEXT], opts));
  const jsonl = path.join(dir, "d.jsonl");
  fs.writeFileSync(jsonl, ["Once upon a time.", "The end."].map((text) => JSON.stringify({ text })).join("\n") + "\n");
  assert.deepEqual(await loadTrainingData(tok, [xzOf(jsonl, dir), TEXT], opts), await loadTrainingData(tok, [jsonl, TEXT], opts));

  const cache = path.join(dir, "tokens");
  const first = await loadTrainingData(tok, [xz], { ...opts, cacheDir: cache });
  assert.equal(fs.readdirSync(cache).length, 1);
  const again = await withoutXz(() => loadTrainingData(refusing, [xz], { ...opts, cacheDir: cache }));
  assert.deepEqual(again, first);
  // A new archive (another mtime) is another key: decompressed (no tool now: refused) and tokenized again.
  const later = new Date(Date.now() + 10_000);
  fs.utimesSync(xz, later, later);
  await assert.rejects(withoutXz(() => loadTrainingData(tok, [xz], { ...opts, cacheDir: cache })), (e: Error) => e instanceof MlaError && e.code === "UNSUPPORTED" && e.message.includes(xz) && /xz tool .* was not found[\s\S]*hint: install it .*xz -dk/.test(e.message));
});

test("a damaged or truncated .xz is refused naming the file; a stop while decompressing is a stop", { skip: NO_XZ }, async () => {
  const xz = xzOf(TEXT);
  const bytes = fs.readFileSync(xz);
  const truncated = path.join(tmpDir(), "cut.txt.xz");
  fs.writeFileSync(truncated, bytes.subarray(0, bytes.length >> 1));
  const corrupt = path.join(tmpDir(), "bad.txt.xz");
  const flipped = Buffer.from(bytes);
  flipped[flipped.length >> 1]! ^= 0xff;
  fs.writeFileSync(corrupt, flipped);
  for (const f of [truncated, corrupt]) {
    checkDataFile(f); // its start is xz's: only decompressing finds the damage
    await assert.rejects(loadTrainingData(tok, [f], opts), (e: Error) => e instanceof MlaError && e.code === "BAD_TEXT" && e.message.startsWith(`${f} could not be decompressed: `) && /hint: the archive is damaged or truncated \(xz -t /.test(e.message), f);
  }
  await assert.rejects(loadTrainingData(tok, [xz], { ...opts, shouldStop: () => true }), (e: Error) => e instanceof MlaError && e.code === "INTERRUPTED");
});

test("--data files are checked before any work: empty, a folder, not text, not xz data under an .xz name", () => {
  const dir = tmpDir();
  const refused = (f: string, re: RegExp) => assert.throws(() => checkDataFile(f), (e: Error) => e instanceof MlaError && re.test(e.message) && /hint:/.test(e.message), f);
  const empty = path.join(dir, "empty.txt");
  fs.writeFileSync(empty, "");
  refused(empty, /^--data .*empty\.txt is empty/);
  refused(dir, /is a folder, not a text file/);
  const renamed = path.join(dir, "plain.txt.xz");
  fs.copyFileSync(TEXT, renamed);
  refused(renamed, /plain\.txt\.xz is named \.xz but does not start as xz-compressed data/);
  const binary = path.join(dir, "weights.txt");
  fs.copyFileSync(path.join(MODELS, "stories260K", "model.safetensors"), binary);
  refused(binary, /weights\.txt is not a text file: its start looks like a safetensors checkpoint/);
  checkDataFile(TEXT);
});

test("finetune trains on an .xz corpus as on its text", { skip: NO_XZ }, async () => {
  const xz = xzOf(TEXT);
  const o = { tokens: 4 * 32, seq: 32, batch: 4, valFraction: 0.05, device: "cpu" as const, progress: null };
  const [a, b] = [await finetune(path.join(MODELS, "stories260K"), { ...o, data: [xz], out: path.join(tmpDir(), "xz") }), await finetune(path.join(MODELS, "stories260K"), { ...o, data: [TEXT], out: path.join(tmpDir(), "txt") })];
  assert.equal(a.valNllBefore, b.valNllBefore);
  assert.equal(a.valNllAfter, b.valNllAfter);
});
