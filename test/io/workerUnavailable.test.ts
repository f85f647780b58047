/**
 * A worker thread that cannot be created (`new Worker` throws: a thread limit, a runtime without workers):
 * every caller of the tokenizer's worker threads does the work on this thread instead, with the same
 * answer, where it threw before. Creation is made to fail through tokenizerThread's workerStart seam.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { decodeOffThread } from "../../src/io/decodeOffThread.js";
import { encodeTexts } from "../../src/io/encodeLong.js";
import { encodeUpToOffThread } from "../../src/io/encodeOffThread.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { TokenizerThread, workerStart } from "../../src/io/tokenizerThread.js";
import { FIXTURES, storiesTokenizerCopy } from "../helpers.js";

const create = workerStart.create;

/** `body` with worker creation failing after the first `allowed` workers. */
async function withFailingStarts<T>(allowed: number, body: () => Promise<T>): Promise<T> {
  let made = 0;
  workerStart.create = (url, options) => {
    if (made++ >= allowed) throw new Error("ERR_WORKER_INIT_FAILED (made up)");
    return create(url, options);
  };
  try {
    return await body();
  } finally {
    workerStart.create = create;
  }
}

test("a thread that cannot start answers every request with why and unstarted, and ends at once", async () => {
  await withFailingStarts(0, async () => {
    const t = new TokenizerThread(storiesTokenizerCopy(), undefined);
    const r = await t.ask({ kind: "pieces", pieces: [{ text: "Once", cont: false }] });
    assert.deepEqual(r, { ok: false, why: "a tokenizer worker thread could not start: ERR_WORKER_INIT_FAILED (made up)", unstarted: true });
    assert.equal(t.busy, false);
    await t.end();
    t.retire();
  });
});

test("encodeTexts with no worker thread to be had (none, or one of two) gives this thread's ids and says why", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  const text = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8");
  for (const [allowed, workers] of [[0, 2], [1, 2], [0, 1]] as const) {
    const warnings: string[] = [];
    const o = { pieceChars: 1024, parallelAbove: 0, workers, offThreadPieceChars: workers === 1 ? 0 : undefined, label: "tiny.txt", logger: { info: () => {}, warn: (m: string) => warnings.push(m) } };
    const ids = await withFailingStarts(allowed, () => encodeTexts(tok, [text, "A short one."], o));
    assert.deepEqual(ids.map((a) => [...a]), [tok.encode(text), tok.encode("A short one.")], `${allowed} of ${workers} started`);
    assert.deepEqual(warnings, ["a tokenizer worker thread could not start: ERR_WORKER_INIT_FAILED (made up); tokenizing the rest of tiny.txt on this thread"]);
  }
});

test("encodeUpToOffThread and decodeOffThread with no worker thread to be had answer from this thread", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  const text = "Once upon a time,    a little fox found a shiny red ball.  ".repeat(100);
  const ids = tok.encode(text, { addSpecialTokens: true });
  await withFailingStarts(0, async () => {
    assert.deepEqual(await encodeUpToOffThread(tok, text, { max: ids.length, addSpecialTokens: true, offThreadAbove: 100 }), ids);
    assert.equal(await decodeOffThread(tok, ids, { skipSpecialTokens: true, offThreadAbove: 100 }), tok.decode(ids, { skipSpecialTokens: true }));
  });
  // Creation works again: the next request gets a worker, not the unstarted one's answer.
  assert.deepEqual(await encodeUpToOffThread(tok, text, { max: ids.length, addSpecialTokens: true, offThreadAbove: 100 }), ids);
});
