/**
 * Checks of the held tokenizer worker (src/io/heldTokenizerThreads.ts) that encodeUpToOffThread's and
 * decodeOffThread's tests both run (test helper, not a test file): each operation reaches the worker
 * through the same held map, so each must show the same replacement, fallback and exit behaviour, and
 * one copy of the checks keeps the two from drifting apart.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { askHeldThread, heldThreadsStarted } from "../../src/io/heldTokenizerThreads.js";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import type { TokenizerRequest } from "../../src/io/tokenizerWorker.js";
import { MODELS, storiesTokenizerCopy, tmpDir } from "../helpers.js";

/** An operation under test, on an input long enough to be sent to the worker. */
export interface OffThreadOp {
  /** What the operation does, for messages: "tokenized", "decoded". */
  done: string;
  /** Its answer for `tok`, asked off this thread. */
  offThread: (tok: TextTokenizer) => Promise<unknown>;
  /** This thread's answer for `tok`: what offThread must give, wherever it ran. */
  here: (tok: TextTokenizer) => unknown;
}

/** A tokenizer of the same folder built from other files gets a new worker; the old files' tokenizer falls back to this thread. */
export async function checkNewFilesNewWorker(op: OffThreadOp): Promise<void> {
  const dir = storiesTokenizerCopy();
  const old = loadTokenizer(dir);
  await op.offThread(old);
  fs.appendFileSync(path.join(dir, "tokenizer.json"), "\n"); // the same tokenizer, other bytes: another hash
  const now = loadTokenizer(dir);
  assert.notEqual(now.filesHash, old.filesHash);
  const before = heldThreadsStarted();
  assert.deepEqual(await op.offThread(now), op.here(now));
  assert.deepEqual(await op.offThread(now), op.here(now));
  assert.equal(heldThreadsStarted(), before + 1, "one new worker, for the new files");
  assert.deepEqual(await op.offThread(old), op.here(old), `its worker refuses the folder's files (not those it was built from): ${op.done} here`);
  assert.equal(heldThreadsStarted(), before + 2);
}

/**
 * A worker that fails mid-request leaves the request asked behind the failing one to this thread, and
 * `next` (op itself unless given: a variant of it) gets a new worker.
 */
export async function checkCrashNewWorker(op: OffThreadOp, next: OffThreadOp = op): Promise<void> {
  const tok = loadTokenizer(storiesTokenizerCopy());
  await op.offThread(tok);
  const before = heldThreadsStarted();
  // A request the worker does not know ends it; the one asked right behind it was sent to the same worker.
  const crash = askHeldThread({ dir: tok.dir!, filesHash: tok.filesHash! }, { kind: "nonsense" } as unknown as TokenizerRequest);
  const behind = op.offThread(tok);
  const r = await crash;
  assert.ok(!r.ok && /does not know: "nonsense"/.test(r.why), JSON.stringify(r));
  assert.deepEqual(await behind, op.here(tok), `${op.done} on this thread`);
  assert.equal(heldThreadsStarted(), before, "no worker started for it");
  assert.deepEqual(await next.offThread(tok), next.here(tok));
  assert.equal(heldThreadsStarted(), before + 1, "a new worker for the next request");
}

/** The operation as a child script runs it: JavaScript source, with `tok` (stories260K) in scope. */
export interface ScriptOp {
  /** The file under src/io/ that exports `fn`. */
  module: string;
  fn: string;
  /** An expression for the input: long enough to go to the worker with `options`. */
  input: string;
  /** An expression for fn's options (its third argument). */
  options: string;
  /** An expression for this thread's answer for `input`. */
  here: string;
}

/** An idle worker keeps no process alive: a script that ran `op` in one exits by itself. */
export function checkIdleWorkerExits(op: ScriptOp): void {
  const at = (f: string) => JSON.stringify(new URL(`../../src/io/${f}`, import.meta.url).href);
  const script = `
    import { ${op.fn} } from ${at(op.module)};
    import { heldThreads, heldThreadsStarted } from ${at("heldTokenizerThreads.js")};
    import { loadTokenizer } from ${at("tokenizer.js")};
    heldThreads.idleMs = 1e9; // never ended for being idle: only its unref lets the process go
    const tok = loadTokenizer(${JSON.stringify(path.join(MODELS, "stories260K"))});
    const input = ${op.input};
    const got = await ${op.fn}(tok, input, ${op.options});
    console.log(JSON.stringify({ same: JSON.stringify(got) === JSON.stringify(${op.here}), started: heldThreadsStarted() }));
  `;
  // A file, not -e: node -e ends the process when the script is done, whatever handles are open.
  const file = path.join(tmpDir(), `${op.fn}.mjs`);
  fs.writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.signal, null, `the script was killed after 60 s: the idle worker held it open\n${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { same: true, started: 1 });
}
