/**
 * decodeOffThread: a long id list decoded in a worker thread gives tok.decode's text exactly, while
 * this thread's event loop turns; a short one stays here, and so does one the worker could not decode
 * as this tokenizer does (its folder gone or changed, a decode the caller replaced). The worker is the
 * tokenizer's held one: started once, kept, replaced for other files or after a failure, and never
 * holding a process open.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { decodeOffThread } from "../../src/io/decodeOffThread.js";
import { askHeldThread, heldThreadsStarted } from "../../src/io/heldTokenizerThreads.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import type { TokenizerRequest } from "../../src/io/tokenizerWorker.js";
import { MODELS, storiesTokenizerCopy, tmpDir } from "../helpers.js";

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

test("a tokenizer of the same folder built from other files gets a new worker; the old files' tokenizer falls back to this thread", async () => {
  const dir = storiesTokenizerCopy();
  const old = loadTokenizer(dir);
  await decodeOffThread(old, long, opts);
  fs.appendFileSync(path.join(dir, "tokenizer.json"), "\n");
  const now = loadTokenizer(dir);
  const before = heldThreadsStarted();
  assert.equal(await decodeOffThread(now, long, opts), now.decode(long));
  assert.equal(await decodeOffThread(now, long, opts), now.decode(long));
  assert.equal(heldThreadsStarted(), before + 1, "one new worker, for the new files");
  assert.equal(await decodeOffThread(old, long, opts), old.decode(long), "its worker refuses the folder's files: decoded here");
  assert.equal(heldThreadsStarted(), before + 2);
});

test("a worker that fails mid-request leaves its ids to this thread, and the next long decode gets a new worker", async () => {
  const tok = loadTokenizer(storiesTokenizerCopy());
  await decodeOffThread(tok, long, opts);
  const before = heldThreadsStarted();
  // A request the worker does not know ends it; the decode asked right behind it was sent to the same worker.
  const crash = askHeldThread({ dir: tok.dir!, filesHash: tok.filesHash! }, { kind: "nonsense" } as unknown as TokenizerRequest);
  const behind = decodeOffThread(tok, long, opts);
  assert.equal((await crash).ok, false);
  assert.equal(await behind, tok.decode(long), "decoded on this thread");
  assert.equal(heldThreadsStarted(), before, "no worker started for it");
  assert.equal(await decodeOffThread(tok, long, opts), tok.decode(long));
  assert.equal(heldThreadsStarted(), before + 1, "a new worker for the next decode");
});

test("an idle worker keeps no process alive: a script that decoded in one exits by itself", () => {
  const at = (f: string) => JSON.stringify(new URL(`../../src/io/${f}`, import.meta.url).href);
  const script = `
    import { decodeOffThread } from ${at("decodeOffThread.js")};
    import { heldThreads, heldThreadsStarted } from ${at("heldTokenizerThreads.js")};
    import { loadTokenizer } from ${at("tokenizer.js")};
    heldThreads.idleMs = 1e9; // never ended for being idle: only its unref lets the process go
    const tok = loadTokenizer(${JSON.stringify(path.join(MODELS, "stories260K"))});
    const ids = tok.encode("Once upon a time, a fox. ".repeat(400));
    const text = await decodeOffThread(tok, ids, { skipSpecialTokens: false, offThreadAbove: 1000 });
    console.log(JSON.stringify({ same: text === tok.decode(ids), started: heldThreadsStarted() }));
  `;
  // A file, not -e: node -e ends the process when the script is done, whatever handles are open.
  const file = path.join(tmpDir(), "decode.mjs");
  fs.writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.signal, null, `the script was killed after 60 s: the idle worker held it open\n${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { same: true, started: 1 });
});
