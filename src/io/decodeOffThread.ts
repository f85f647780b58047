/**
 * A long id list decoded in a worker thread, so that a server's other streams go on meanwhile: one
 * decode of 900k ids held every stream for ~0.3 s. Starting the worker and loading the tokenizer there
 * costs ~0.2–0.4 s, paid only by such a request; the text is tok.decode's, bit for bit (the worker
 * loads the same folder's files).
 */
import { Worker } from "node:worker_threads";
import { MlaError } from "../errors.js";
import type { TextTokenizer } from "./tokenizer.js";

/** `ids` as tok.decode gives them; in a worker thread where there are more than `offThreadAbove` and tok knows its folder. */
export async function decodeOffThread(tok: TextTokenizer, ids: readonly number[], o: { skipSpecialTokens: boolean; offThreadAbove: number }): Promise<string> {
  if (ids.length <= o.offThreadAbove || !tok.dir) return tok.decode(ids, { skipSpecialTokens: o.skipSpecialTokens });
  const packed = Int32Array.from(ids);
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL("./decodeWorker.js", import.meta.url), { workerData: { dir: tok.dir, ids: packed, skipSpecialTokens: o.skipSpecialTokens }, transferList: [packed.buffer as ArrayBuffer] });
    let answered = false;
    w.once("message", (text: string) => {
      answered = true;
      resolve(text);
      void w.terminate();
    });
    w.once("error", (e) => reject(new MlaError("BAD_TOKENIZER", `decoding ${ids.length} ids in a worker thread failed: ${e.message}`, `the tokenizer in ${tok.dir} could not decode them`)));
    w.once("exit", (code) => {
      if (!answered) reject(new MlaError("BAD_TOKENIZER", `a worker thread decoding ${ids.length} ids exited (code ${code}) before it was done`, "try again; if it repeats, the tokenizer folder may have changed"));
    });
  });
}
