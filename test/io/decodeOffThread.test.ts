/**
 * decodeOffThread: a long id list decoded in a worker thread gives tok.decode's text exactly, while
 * this thread's event loop turns; a short one stays here; a worker that cannot load the tokenizer is
 * an MlaError naming the ids and the folder.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { decodeOffThread } from "../../src/io/decodeOffThread.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { MODELS, tmpDir } from "../helpers.js";

const stories = loadTokenizer(path.join(MODELS, "stories260K"));

test("more ids than offThreadAbove are decoded in a worker thread: tok.decode's text, special tokens as asked, and the event loop turns meanwhile", async () => {
  const ids = [1, ...stories.encode("Once upon a time, a little fox found a shiny red ball. ".repeat(3000)), 2];
  assert.ok(ids.length > 40_000, `${ids.length} ids`);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    for (const skipSpecialTokens of [false, true]) {
      const text = await decodeOffThread(stories, ids, { skipSpecialTokens, offThreadAbove: 1000 });
      assert.equal(text, stories.decode(ids, { skipSpecialTokens }));
    }
  } finally {
    clearInterval(timer);
  }
  assert.ok(ticks > 0, "the event loop turned while the worker decoded");
});

test("up to offThreadAbove ids, or a tokenizer that does not know its folder, decode on this thread", async () => {
  const ids = stories.encode("a short story");
  const broken = { ...stories, dir: tmpDir() }; // a worker would fail: no tokenizer.json there
  assert.equal(await decodeOffThread(broken, ids, { skipSpecialTokens: false, offThreadAbove: ids.length }), stories.decode(ids));
  assert.equal(await decodeOffThread({ ...stories, dir: undefined }, ids, { skipSpecialTokens: false, offThreadAbove: 0 }), stories.decode(ids));
});

test("a worker that cannot load the tokenizer is an MlaError naming the ids and the folder", async () => {
  const dir = tmpDir();
  await assert.rejects(decodeOffThread({ ...stories, dir }, [5, 6, 7], { skipSpecialTokens: false, offThreadAbove: 0 }), (e: unknown) => e instanceof MlaError && e.code === "BAD_TOKENIZER" && /decoding 3 ids in a worker thread failed: .*tokenizer\.json does not exist/.test(e.message) && e.message.includes(dir));
});
