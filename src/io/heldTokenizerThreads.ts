/**
 * The worker threads a server's long texts are tokenized in (encodeUpToOffThread, decodeOffThread,
 * encodeLong's single worker), one per tokenizer — its folder and the hash of the files it was built
 * from — started on first use and kept for the next request: a start loads the tokenizer again, ~0.2–0.4 s
 * (seconds for a 128k vocabulary), which a fresh worker per text paid every time. A tokenizer of the
 * same folder built from other files gets a new worker (the old one ends once it has answered); one
 * that failed or exited is dropped, and the next request starts another. An idle worker keeps no
 * process alive (TokenizerThread), and ends after heldThreads.idleMs without a request: it holds a
 * second copy of the tokenizer (~70 MB of memory for mha26m-debian's 32k vocabulary, more for 128k),
 * which a server that gets a long text now and then should not carry between them, while a burst of
 * long texts still loads it once.
 */
import path from "node:path";
import { TokenizerThread, type Outcome } from "./tokenizerThread.js";
import type { TokenizerRequest } from "./tokenizerWorker.js";

/** How long a worker waits for its next request before it ends (ms); tests shorten it. */
export const heldThreads = { idleMs: 60_000 };

interface Held {
  /** Its folder, resolved: its key in `held`. */
  key: string;
  thread: TokenizerThread;
  filesHash: string | undefined;
  idle?: NodeJS.Timeout;
}

/** By resolved folder. */
const held = new Map<string, Held>();
let started = 0;

/** Workers started by askHeldThread so far: for tests and diagnostics. */
export function heldThreadsStarted(): number {
  return started;
}

/** The worker of the tokenizer built from `filesHash`'s files in `dir`: the held one, else a new one. */
function threadFor(dir: string, filesHash: string | undefined): Held {
  const key = path.resolve(dir);
  let h = held.get(key);
  if (h && (h.thread.gone !== null || h.filesHash !== filesHash)) {
    clearTimeout(h.idle);
    h.thread.retire();
    h = undefined;
  }
  if (!h) {
    h = { key, thread: new TokenizerThread(dir, filesHash), filesHash };
    started++;
    held.set(key, h);
  }
  return h;
}

/** `request`'s answer from the worker held for `tok` (started where there is none), or why it gave none. */
export async function askHeldThread<T>(tok: { dir: string; filesHash?: string }, request: TokenizerRequest, transfer: ArrayBuffer[] = []): Promise<Outcome<T>> {
  const h = threadFor(tok.dir, tok.filesHash);
  clearTimeout(h.idle);
  const out = await h.thread.ask<T>(request, transfer);
  if (!h.thread.busy && h.thread.gone === null) {
    clearTimeout(h.idle);
    h.idle = setTimeout(() => {
      if (h.thread.busy || held.get(h.key) !== h) return;
      held.delete(h.key);
      void h.thread.end("the tokenizer worker thread was idle");
    }, heldThreads.idleMs).unref();
  }
  return out;
}
