/**
 * Worker thread of encodeLong: loads the tokenizer from the folder in workerData, then answers each
 * message {b, pieces} with {b, ids} (one Int32Array per piece, buffers transferred). An exception
 * ends the worker, and the main thread turns its "error" event into an MlaError.
 */
import { parentPort, workerData } from "node:worker_threads";
import { encodePiece, type Piece } from "./encodeLong.js";
import { loadTokenizer } from "./tokenizer.js";

const tok = loadTokenizer((workerData as { dir: string }).dir);
parentPort!.on("message", (m: { b: number; pieces: Piece[] }) => {
  const ids = m.pieces.map((p) => encodePiece(tok, p));
  parentPort!.postMessage({ b: m.b, ids }, ids.map((a) => a.buffer as ArrayBuffer));
});
