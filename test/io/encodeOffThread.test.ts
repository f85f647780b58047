/**
 * encodeUpToOffThread: a long text tokenized in a worker thread gives encodeUpTo's answer exactly (the
 * ids tok.encode gives, or null past the limit) while this thread's event loop turns; a short one stays
 * here, and so does one the worker could not tokenize as this tokenizer does. The worker is the
 * tokenizer's held one: started once, kept, replaced for other files or after a failure, and never
 * holding a process open (those last three checked as for decodeOffThread, in heldWorkerChecks.ts).
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { decodeOffThread } from "../../src/io/decodeOffThread.js";
import { encodeUpTo, encodeUpToOffThread } from "../../src/io/encodeOffThread.js";
import { heldThreads, heldThreadsStarted } from "../../src/io/heldTokenizerThreads.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { MODELS, storiesTokenizerCopy, tmpDir } from "../helpers.js";
import { checkCrashNewWorker, checkIdleWorkerExits, checkNewFilesNewWorker, type OffThreadOp } from "./heldWorkerChecks.js";

const stories = loadTokenizer(path.join(MODELS, "stories260K"));
// One line (no break to cut at), and runs of spaces, which BPE merges across any cut.
const text = "Once upon a time,    a little fox found a shiny red ball.  ".repeat(400);

test("a text longer than offThreadAbove is tokenized in a worker thread: encodeUpTo's answer, and the event loop turns meanwhile", async () => {
  const all = stories.encode(text, { addSpecialTokens: true });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    for (const addSpecialTokens of [true, false]) {
      const ids = await encodeUpToOffThread(stories, text, { max: all.length, addSpecialTokens, offThreadAbove: 1000 });
      assert.deepEqual(ids, stories.encode(text, { addSpecialTokens }), `addSpecialTokens ${addSpecialTokens}`);
    }
    // One id short of the text, and far short (the worker tokenizes only its start): more than max.
    for (const max of [all.length - 1, 100]) assert.equal(await encodeUpToOffThread(stories, text, { max, addSpecialTokens: true, offThreadAbove: 1000 }), null, `max ${max}`);
  } finally {
    clearInterval(timer);
  }
  assert.ok(ticks > 0, "the event loop turned while the worker tokenized");
  assert.deepEqual(encodeUpTo(stories, text, all.length, true), all);
});

test("where the worker cannot tokenize as this tokenizer does, this thread does: the folder gone, an encode the caller replaced", async () => {
  const o = { max: 1e6, addSpecialTokens: false, offThreadAbove: 0 };
  assert.deepEqual(await encodeUpToOffThread({ ...stories, dir: tmpDir() }, text, o), stories.encode(text), "no tokenizer.json in the folder: the worker fails");
  assert.deepEqual(await encodeUpToOffThread({ ...stories, encode: () => [7, 8] }, text, o), [7, 8]);
});

const o = { max: 1e6, addSpecialTokens: true, offThreadAbove: 1000 };

test("the worker is started by the first long text and kept: later texts, and long decodes of the same tokenizer, start none", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  const before = heldThreadsStarted();
  assert.deepEqual(await encodeUpToOffThread(tok, text, o), tok.encode(text, { addSpecialTokens: true }));
  assert.equal(heldThreadsStarted(), before + 1);
  const other = "A dog ran in the park,   chasing   a stick. ".repeat(500);
  assert.deepEqual(await encodeUpToOffThread(tok, other, { ...o, addSpecialTokens: false }), tok.encode(other));
  assert.equal(await encodeUpToOffThread(tok, text, { ...o, max: 100 }), null);
  const ids = tok.encode(other);
  assert.equal(await decodeOffThread(tok, ids, { skipSpecialTokens: false, offThreadAbove: 1000 }), tok.decode(ids));
  assert.equal(heldThreadsStarted(), before + 1, "one worker for all four");
});

/** A long text, tokenized with or without the special tokens. */
const encodes = (addSpecialTokens: boolean): OffThreadOp => ({
  done: "tokenized",
  offThread: (tok) => encodeUpToOffThread(tok, text, { ...o, addSpecialTokens }),
  here: (tok) => tok.encode(text, { addSpecialTokens }),
});

test("a tokenizer of the same folder built from other files gets a worker of its own; the old files' tokenizer then falls back to this thread", () => checkNewFilesNewWorker(encodes(true)));

test("a worker that fails mid-request leaves its text to this thread, and the next long text gets a new worker", () => checkCrashNewWorker(encodes(true), encodes(false)));

test("a worker idle for heldThreads.idleMs ends, and the next long text starts another", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  const idleMs = heldThreads.idleMs;
  heldThreads.idleMs = 20;
  try {
    await encodeUpToOffThread(tok, text, o);
    const before = heldThreadsStarted();
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(await encodeUpToOffThread(tok, text, o), tok.encode(text, { addSpecialTokens: true }));
    assert.equal(heldThreadsStarted(), before + 1);
  } finally {
    heldThreads.idleMs = idleMs;
  }
});

test("an idle worker keeps no process alive: a script that tokenized a long text in one exits by itself", () =>
  checkIdleWorkerExits({
    module: "encodeOffThread.js",
    fn: "encodeUpToOffThread",
    input: `"Once upon a time,    a fox. ".repeat(400)`,
    options: "{ max: 1e6, addSpecialTokens: true, offThreadAbove: 1000 }",
    here: "tok.encode(input, { addSpecialTokens: true })",
  }));
