/**
 * decodeOffThread: a long id list decoded in a worker thread gives tok.decode's text exactly, while
 * this thread's event loop turns; a short one stays here, and so does one the worker could not decode
 * as this tokenizer does (its folder gone or changed, a decode the caller replaced). The worker is the
 * tokenizer's held one: started once, kept, replaced for other files or after a failure, and never
 * holding a process open (those last three checked as for encodeUpToOffThread, in heldWorkerChecks.ts).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { decodeOffThread } from "../../src/io/decodeOffThread.js";
import { heldThreadsStarted } from "../../src/io/heldTokenizerThreads.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { MODELS, storiesTokenizerCopy, tmpDir } from "../helpers.js";
import { checkCrashNewWorker, checkIdleWorkerExits, checkNewFilesNewWorker, type OffThreadOp } from "./heldWorkerChecks.js";

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

test("where the worker cannot decode as this tokenizer does, this thread decodes: the folder gone, its files changed since the load, or a decode the caller replaced", async () => {
  const ids = stories.encode("Once upon a time there was a fox. ".repeat(50));
  const opts = { skipSpecialTokens: false, offThreadAbove: 0 };
  assert.equal(await decodeOffThread({ ...stories, dir: tmpDir() }, ids, opts), stories.decode(ids), "no tokenizer.json in the folder: the worker fails");
  const dir = storiesTokenizerCopy();
  const loaded = loadTokenizer(dir);
  const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as { model: { vocab: Record<string, number> } };
  const [piece, id] = Object.entries(tj.model.vocab).find(([p]) => p.length > 3)!;
  delete tj.model.vocab[piece];
  tj.model.vocab[piece + "X"] = id;
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tj));
  const some = [id, ...ids];
  assert.equal(await decodeOffThread(loaded, some, opts), loaded.decode(some), "the served tokenizer's text, not the changed file's");
  assert.equal(await decodeOffThread({ ...stories, decode: () => "custom" }, ids, opts), "custom");
});

test("concurrent long decodes run one worker at a time and each gets its own text", async () => {
  const a = stories.encode("The cat sat on the mat. ".repeat(400)), b = stories.encode("A dog ran in the park. ".repeat(400));
  const opts = { skipSpecialTokens: false, offThreadAbove: 100 };
  const [ta, tb] = await Promise.all([decodeOffThread(stories, a, opts), decodeOffThread(stories, b, opts)]);
  assert.equal(ta, stories.decode(a));
  assert.equal(tb, stories.decode(b));
});

const long = stories.encode("Once upon a time, a little fox found a shiny red ball. ".repeat(200));
const opts = { skipSpecialTokens: false, offThreadAbove: 1000 };

test("the worker is started by the first long decode and kept for the next ones", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  const before = heldThreadsStarted();
  for (const skipSpecialTokens of [false, true, false]) assert.equal(await decodeOffThread(tok, [1, ...long], { ...opts, skipSpecialTokens }), tok.decode([1, ...long], { skipSpecialTokens }));
  assert.equal(heldThreadsStarted(), before + 1);
});

/** The long ids, decoded with their special tokens. */
const decodes: OffThreadOp = { done: "decoded", offThread: (tok) => decodeOffThread(tok, long, opts), here: (tok) => tok.decode(long) };

test("a tokenizer of the same folder built from other files gets a new worker; the old files' tokenizer falls back to this thread", () => checkNewFilesNewWorker(decodes));

test("a worker that fails mid-request leaves its ids to this thread, and the next long decode gets a new worker", () => checkCrashNewWorker(decodes));

test("an idle worker keeps no process alive: a script that decoded in one exits by itself", () =>
  checkIdleWorkerExits({
    module: "decodeOffThread.js",
    fn: "decodeOffThread",
    input: `tok.encode("Once upon a time, a fox. ".repeat(400))`,
    options: "{ skipSpecialTokens: false, offThreadAbove: 1000 }",
    here: "tok.decode(input)",
  }));
