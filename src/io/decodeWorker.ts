/**
 * Worker thread of decodeOffThread: loads the tokenizer from the folder in workerData and, if it was
 * built from the files the caller's was (their hash), decodes the ids once and posts the text back;
 * else posts null (the folder changed since the caller loaded it: the caller decodes itself). An
 * exception ends the worker, and the main thread decodes itself too.
 */
import { parentPort, workerData } from "node:worker_threads";
import { loadTokenizer } from "./tokenizer.js";

const { dir, filesHash, ids, skipSpecialTokens } = workerData as { dir: string; filesHash: string; ids: Int32Array; skipSpecialTokens: boolean };
const tok = loadTokenizer(dir);
parentPort!.postMessage(tok.filesHash === filesHash ? tok.decode(Array.from(ids), { skipSpecialTokens }) : null);
