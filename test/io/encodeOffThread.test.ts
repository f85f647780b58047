/**
 * encodeUpToOffThread: a long text tokenized in a worker thread gives encodeUpTo's answer exactly (the
 * ids tok.encode gives, or null past the limit) while this thread's event loop turns; a short one stays
 * here, and so does one the worker could not tokenize as this tokenizer does.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { encodeUpTo, encodeUpToOffThread } from "../../src/io/encodeOffThread.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { MODELS, tmpDir } from "../helpers.js";

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
