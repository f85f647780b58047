/**
 * Worker thread of encodeLong: loads the tokenizer from the folder in workerData (refusing files other
 * than those the caller's tokenizer was built from, by their hash), then answers each
 * message {b, pieces} with {b, ids} (one Int32Array per piece, buffers transferred). An exception
 * ends the worker, and the main thread turns its "error" event into an MlaError.
 */
import { parentPort, workerData } from "node:worker_threads";
import { encodePiece, type Piece } from "./encodeLong.js";
import { loadTokenizer } from "./tokenizer.js";

const { dir, filesHash } = workerData as { dir: string; filesHash?: string };
const tok = loadTokenizer(dir);
// Ids from other files than the caller's tokenizer was built from would differ from its own, unseen.
if (filesHash !== undefined && tok.filesHash !== filesHash) throw new Error(`the tokenizer files in ${dir} changed after this process loaded them`);
parentPort!.on("message", (m: { b: number; pieces: Piece[] }) => {
  const ids = m.pieces.map((p) => encodePiece(tok, p));
  parentPort!.postMessage({ b: m.b, ids }, ids.map((a) => a.buffer as ArrayBuffer));
});
