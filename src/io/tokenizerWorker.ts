/**
 * A worker thread holding one tokenizer, loaded from the folder in workerData, that answers each
 * request message {id, …} with {id, answer}, in the order sent. It loads the tokenizer once and then
 * serves any number of requests, because a load costs ~0.2–0.4 s (seconds for a 128k vocabulary):
 * tokenizerThread.ts keeps one per tokenizer for a server's long texts, encodeLong starts several for a
 * corpus. Files other than those the caller's tokenizer was built from (their hash) are refused at
 * start: their ids would differ from the caller's, unseen. A refusal, or a request that throws, ends
 * the worker (its "error" event); the caller then tokenizes itself or reports the failure.
 */
import { parentPort, workerData } from "node:worker_threads";
import { encodeUpTo } from "./encodeOffThread.js";
import { encodePiece, type Piece } from "./encodeLong.js";
import { loadTokenizer } from "./tokenizer.js";

/** What a worker is asked, and (in the comment) what it answers. */
export type TokenizerRequest =
  /** → Int32Array of the ids, or null: more than max (encodeUpTo's answer). */
  | { kind: "encodeUpTo"; text: string; max: number; addSpecialTokens: boolean }
  /** → the text, as tok.decode gives it. */
  | { kind: "decode"; ids: Int32Array; skipSpecialTokens: boolean }
  /** → one Int32Array per piece (encodePiece). */
  | { kind: "pieces"; pieces: Piece[] };

const { dir, filesHash } = workerData as { dir: string; filesHash?: string };
const tok = loadTokenizer(dir);
if (filesHash !== undefined && tok.filesHash !== filesHash) throw new Error(`the tokenizer files in ${dir} changed after this process loaded them`);

/** The answer to `r`, with the buffers to transfer rather than copy. */
function answer(r: TokenizerRequest): [unknown, ArrayBuffer[]] {
  switch (r.kind) {
    case "encodeUpTo": {
      const ids = encodeUpTo(tok, r.text, r.max, r.addSpecialTokens);
      const packed = ids && Int32Array.from(ids);
      return [packed, packed ? [packed.buffer as ArrayBuffer] : []];
    }
    case "decode":
      return [tok.decode(Array.from(r.ids), { skipSpecialTokens: r.skipSpecialTokens }), []];
    case "pieces": {
      const ids = r.pieces.map((p) => encodePiece(tok, p));
      return [ids, ids.map((a) => a.buffer as ArrayBuffer)];
    }
    default:
      // A request of another build (a bug): ending the worker makes its caller tokenize itself.
      throw new Error(`a tokenizer worker was sent a request it does not know: ${JSON.stringify((r as { kind?: unknown }).kind)}`);
  }
}

parentPort!.on("message", (m: TokenizerRequest & { id: number }) => {
  const [value, transfer] = answer(m);
  parentPort!.postMessage({ id: m.id, answer: value }, transfer);
});
