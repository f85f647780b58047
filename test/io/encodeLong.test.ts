/**
 * encodeLong: a long text encoded in pieces (and in worker threads) gives exactly the ids of one
 * encode of the whole text, for the bundled tokenizers on real text; a tokenizer that fails the
 * split probe is encoded whole; a worker failure is an MlaError naming the text.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { encodeLong, encodeTexts, splitAtLines, splitIsExact } from "../../src/io/encodeLong.js";
import { heldThreadsStarted } from "../../src/io/heldTokenizerThreads.js";
import { readTextFile } from "../../src/io/text.js";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { FIXTURES, MODELS, SHARED, storiesTokenizerCopy, tmpDir } from "../helpers.js";

const TEXT = path.join(SHARED, "data", "text");
const DEBIAN = path.join(SHARED, "models", "mha26m-debian");
const haveShared = fs.existsSync(path.join(TEXT, "debian_train.txt")) && fs.existsSync(path.join(TEXT, "alice29.txt"));
const stories = loadTokenizer(path.join(MODELS, "stories260K"));

test("splitAtLines cuts only right after a line break followed by a non-whitespace character, pieces at least the asked length", () => {
  const text = "alpha beta\n gamma\n\ndelta\n\tepsilon\nzeta eta theta\niota\n";
  const pieces = splitAtLines(text, 8);
  assert.equal(pieces.join(""), text);
  assert.deepEqual(pieces, ["alpha beta\n gamma\n\n", "delta\n\tepsilon\n", "zeta eta theta\n", "iota\n"]);
  assert.ok(pieces.slice(0, -1).every((p) => p.length >= 8));
  assert.deepEqual(splitAtLines("no line break at all", 4), ["no line break at all"]);
  assert.deepEqual(splitAtLines("", 4), []);
});

for (const [name, load] of [["stories260K", () => stories], ["mha26m-debian", () => loadTokenizer(DEBIAN)]] as const) {
  const skip = !haveShared || (name === "mha26m-debian" && !fs.existsSync(DEBIAN)) ? `needs ${TEXT} and ${DEBIAN}` : false;
  test(`${name}: encodeLong equals one encode of the whole text (200 KB of debian_train.txt, alice29.txt with CRLF normalized)`, { skip }, async () => {
    const tok = load();
    assert.equal(splitIsExact(tok), true, "the tokenizer passes the split probe");
    for (const text of [readTextFile(path.join(TEXT, "debian_train.txt")).slice(0, 200_000), readTextFile(path.join(TEXT, "alice29.txt"))]) {
      assert.deepEqual([...(await encodeLong(tok, text))], tok.encode(text));
      const head = text.slice(0, 30_000);
      assert.deepEqual([...(await encodeLong(tok, head, { pieceChars: 64 }))], tok.encode(head), "pieces of a line or two");
    }
  });
}

test("worker threads give the single-thread ids, in order, text by text", async () => {
  const text = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8");
  const texts = [text, "", " A short one.\nWith two lines.", text.slice(5000, 9000)];
  const single = await encodeTexts(stories, texts, { pieceChars: 1024 });
  const lines: string[] = [];
  const parallel = await encodeTexts(stories, texts, { pieceChars: 1024, parallelAbove: 0, workers: 2, logger: { info: (m) => lines.push(m), warn: () => {} }, label: "tiny.txt" });
  assert.deepEqual(parallel.map((a) => [...a]), texts.map((t) => stories.encode(t)));
  assert.deepEqual(parallel, single);
  assert.match(lines[0]!, /^tokenizing tiny\.txt: 0\.03 MB in \d+ piece\(s\), 2 worker threads$/);
  assert.match(lines.at(-1)!, /^tokenized tiny\.txt: .* tokens in .* MB\/s\)$/);
});

test("a piece longer than offThreadPieceChars (a text with no line break to cut at) is encoded in a worker thread: the same ids, and this thread's event loop turns meanwhile", async () => {
  const line = "hello world, once upon a time ".repeat(4000); // 120,000 characters, one line
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const lines: string[] = [];
  try {
    const ids = await encodeLong(stories, line, { offThreadPieceChars: 65_536, logger: { info: (m) => lines.push(m), warn: () => {} } });
    assert.deepEqual([...ids], stories.encode(line));
  } finally {
    clearInterval(timer);
  }
  assert.match(lines[0]!, /in 1 piece\(s\), 1 worker thread$/);
  // On this thread one encode of the one piece would hold the loop from start to end: no tick at all.
  assert.ok(ticks > 0, "the event loop turned while the worker encoded");
  // Below the limit, or with pieces to cut at, the text stays on this thread.
  const here: string[] = [];
  await encodeLong(stories, line.slice(0, 20_000), { offThreadPieceChars: 65_536, logger: { info: (m) => here.push(m), warn: () => {} } });
  assert.match(here[0]!, /1 thread$/);
});

test("a single worker thread (offThreadPieceChars) is the tokenizer's held one: later texts start none, and a stop leaves it for the next", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  const line = "hello world, once upon a time ".repeat(3000);
  const before = heldThreadsStarted();
  assert.deepEqual([...(await encodeLong(tok, line, { offThreadPieceChars: 65_536 }))], tok.encode(line));
  await assert.rejects(encodeLong(tok, line, { offThreadPieceChars: 65_536, shouldStop: () => true }), (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED");
  const two = `${line}\n${line}`; // two pieces, each long: two requests to the worker
  // workers: 1, as serve passes: two batches would otherwise go to two fresh workers, not the held one.
  assert.deepEqual([...(await encodeLong(tok, two, { offThreadPieceChars: 65_536, pieceChars: 1024, workers: 1 }))], tok.encode(two));
  assert.equal(heldThreadsStarted(), before + 1);
});

test("a tokenizer whose split encoding differs from the whole one fails the probe and gets each text encoded whole", async () => {
  const calls: string[] = [];
  // Ids that depend on the whole string: any cut changes them.
  const fake: TextTokenizer = { vocabSize: 1 << 20, decode: () => "", encode: (t) => (calls.push(t), [t.length]), encodeContinuation: (t) => [t.length + 1] };
  assert.equal(splitIsExact(fake), false);
  const text = "line one\nline two\n".repeat(500);
  calls.length = 0;
  assert.deepEqual([...(await encodeLong(fake, text, { pieceChars: 16 }))], [text.length]);
  assert.deepEqual(calls, [text]);
  assert.equal(splitIsExact({ ...stories, encodeContinuation: undefined }), false, "no continuation encoder: no split");
});

test("a vocabulary with a token spanning a safe cut (a line break, then a non-whitespace character) fails the probe, even where the probe texts never meet it", () => {
  // Ids that any cut keeps: one per character.
  const chars = (t: string) => [...t].map((c) => c.codePointAt(0)!);
  const vocab = (extra: string) => ["<unk>", "▁the", "\n", "\n\n", "\n ▁", extra];
  const fake = (extra: string): TextTokenizer => ({ vocabSize: 6, decode: () => "", encode: chars, encodeContinuation: chars, idToToken: (id) => vocab(extra)[id] });
  assert.equal(splitIsExact(fake("import")), true, "line breaks only before whitespace, or alone");
  assert.equal(splitIsExact(fake("\nimport")), false);
  assert.equal(splitIsExact(fake("x\n}")), false);
  assert.equal(splitIsExact(stories), true, "stories260K's vocabulary holds no line break");
});

test("a failing worker thread is an MlaError naming the text, and every worker is stopped", async () => {
  const broken = { ...stories, dir: tmpDir() }; // workers load the tokenizer from a folder without one
  await assert.rejects(encodeLong(broken, "one line\n".repeat(5000), { pieceChars: 64, parallelAbove: 0, workers: 2, label: "corpus.txt" }), (e: unknown) => e instanceof MlaError && e.code === "BAD_TOKENIZER" && /tokenizing corpus\.txt in worker threads failed: .*tokenizer\.json does not exist/.test(e.message) && /hint:/.test(e.message));
});

test("worker threads refuse tokenizer files changed after this process loaded them (their ids would differ from this tokenizer's)", async () => {
  const dir = tmpDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(MODELS, "stories260K", f), path.join(dir, f));
  const tok = loadTokenizer(dir);
  fs.appendFileSync(path.join(dir, "tokenizer.json"), "\n");
  await assert.rejects(encodeLong(tok, "one line\n".repeat(5000), { pieceChars: 64, parallelAbove: 0, workers: 2, label: "corpus.txt" }), (e: unknown) => e instanceof MlaError && e.code === "BAD_TOKENIZER" && /tokenizing corpus\.txt in worker threads failed: the tokenizer files in .* changed after this process loaded them/.test(e.message));
});

test("shouldStop ends the tokenizing part-way with INTERRUPTED, on this thread and in worker threads", async () => {
  const text = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8").repeat(4);
  for (const o of [{ pieceChars: 64 }, { pieceChars: 64, parallelAbove: 0, workers: 2 }]) {
    let polls = 0;
    const lines: string[] = [];
    const logger = { info: (m: string) => void lines.push(m), warn: () => {} };
    await assert.rejects(encodeTexts(stories, [text], { ...o, logger, shouldStop: () => ++polls > 1 }), (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED" && /stopped: a stop was asked for \(shouldStop\)/.test(e.message));
    assert.ok(!lines.some((m) => m.startsWith("tokenized ")), `${o.workers ?? 1} thread(s): stopped part-way`);
    assert.equal(polls, 2, "not polled again once stopped");
  }
});
