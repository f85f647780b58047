/**
 * Worker thread of encodeUpToOffThread: loads the tokenizer from the folder in workerData and, if it
 * was built from the files the caller's was (their hash), runs encodeUpTo once and posts {ids} back
 * (null ids: more than max); else posts null (the caller tokenizes itself). An exception ends the
 * worker, and the caller tokenizes itself too.
 */
import { parentPort, workerData } from "node:worker_threads";
import { encodeUpTo } from "./encodeOffThread.js";
import { loadTokenizer } from "./tokenizer.js";

const { dir, filesHash, text, max, addSpecialTokens } = workerData as { dir: string; filesHash: string; text: string; max: number; addSpecialTokens: boolean };
const tok = loadTokenizer(dir);
if (tok.filesHash !== filesHash) parentPort!.postMessage(null);
else {
  const ids = encodeUpTo(tok, text, max, addSpecialTokens);
  const packed = ids && Int32Array.from(ids);
  parentPort!.postMessage({ ids: packed }, packed ? [packed.buffer as ArrayBuffer] : []);
}
