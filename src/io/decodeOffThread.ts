/**
 * A long id list decoded in a worker thread, so that a server's other streams go on meanwhile: one
 * decode of 900k ids held every stream for ~0.3 s. The worker is the tokenizer's held one
 * (heldTokenizerThreads.ts: its start, ~0.2–0.4 s, is paid once, not per request), and one such
 * decode runs at a time (tokenizerWorkers).
 * The text is tok.decode's: the worker decodes only when it loaded the same files (their hash) and tok's
 * decode is the loaded one; otherwise, or when the worker fails, this thread decodes.
 */
import { tokenizerWorkers } from "../util/lane.js";
import { askHeldThread } from "./heldTokenizerThreads.js";
import { decodesAsLoaded, type TextTokenizer } from "./tokenizer.js";

/** `ids` as tok.decode gives them; in a worker thread where there are more than `offThreadAbove` and the worker can decode as tok does. */
export async function decodeOffThread(tok: TextTokenizer, ids: readonly number[], o: { skipSpecialTokens: boolean; offThreadAbove: number }): Promise<string> {
  const here = () => tok.decode(ids, { skipSpecialTokens: o.skipSpecialTokens });
  if (ids.length <= o.offThreadAbove || !decodesAsLoaded(tok)) return here();
  return (await tokenizerWorkers.run(() => inWorker(tok, ids, o.skipSpecialTokens))) ?? here();
}

/** The worker's text; undefined where it could not decode as tok does (other files, a failure). */
async function inWorker(tok: TextTokenizer, ids: readonly number[], skipSpecialTokens: boolean): Promise<string | undefined> {
  const packed = Int32Array.from(ids);
  const r = await askHeldThread<string>({ dir: tok.dir!, filesHash: tok.filesHash! }, { kind: "decode", ids: packed, skipSpecialTokens }, [packed.buffer as ArrayBuffer]);
  return r.ok ? r.value : undefined;
}
