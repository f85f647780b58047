/**
 * Worker thread of decodeOffThread: loads the tokenizer from the folder in workerData, decodes its ids
 * once and posts the text back. An exception ends the worker, and the main thread reports its "error".
 */
import { parentPort, workerData } from "node:worker_threads";
import { loadTokenizer } from "./tokenizer.js";

const { dir, ids, skipSpecialTokens } = workerData as { dir: string; ids: Int32Array; skipSpecialTokens: boolean };
parentPort!.postMessage(loadTokenizer(dir).decode(Array.from(ids), { skipSpecialTokens }));
