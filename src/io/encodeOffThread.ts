/**
 * A text's ids up to a limit, tokenized in a worker thread where the text is long, so that a server's
 * other streams go on meanwhile: a prompt of ~6 MB of spaces (just under serve's byte bound at 131072
 * positions) held every stream for ~11 s on Llama-2's tokenizer. The text is not cut into pieces: a
 * SentencePiece-style BPE (Llama 2's) has no pre-tokenizer, so no cut is safe by the tokenizer's
 * structure (encodeLong's line-break cuts are probed, not proven, and a run of spaces has none). The
 * worker runs encodeUpTo itself, on the same files (their hash), so the ids and the verdict are this
 * thread's; where it cannot (a folder gone or changed, an encode the caller replaced, a failure), this
 * thread tokenizes. The worker is the tokenizer's held one (heldTokenizerThreads.ts: its start, ~0.2–0.4 s,
 * is paid once, not per text), and one such text is tokenized at a time (tokenizerWorkers).
 */
import { tokenizerWorkers } from "../util/lane.js";
import { askHeldThread } from "./heldTokenizerThreads.js";
import { encodedWholeBelow, encodePrefix, encodesAsLoaded, type TextTokenizer } from "./tokenizer.js";

/**
 * `text`'s ids, or null where they are more than `max`; a text far longer is found so by tokenizing
 * only its start (encodePrefix), not all of it.
 */
export function encodeUpTo(tok: TextTokenizer, text: string, max: number, addSpecialTokens: boolean): number[] | null {
  if (text.length >= encodedWholeBelow(max + 1) && encodePrefix(tok, text, max + 1).length > max) return null;
  const ids = tok.encode(text, { addSpecialTokens });
  return ids.length > max ? null : ids;
}

/** encodeUpTo, in a worker thread for a text of more than `offThreadAbove` characters that the worker can tokenize as `tok` does. */
export async function encodeUpToOffThread(tok: TextTokenizer, text: string, o: { max: number; addSpecialTokens: boolean; offThreadAbove: number }): Promise<number[] | null> {
  const here = () => encodeUpTo(tok, text, o.max, o.addSpecialTokens);
  if (text.length <= o.offThreadAbove || !encodesAsLoaded(tok)) return here();
  const answer = await tokenizerWorkers.run(() => inWorker(tok, text, o.max, o.addSpecialTokens));
  return answer === undefined ? here() : answer;
}

/** The worker's answer (ids, or null: more than max), or undefined where it could not tokenize as tok does. */
async function inWorker(tok: TextTokenizer, text: string, max: number, addSpecialTokens: boolean): Promise<number[] | null | undefined> {
  const r = await askHeldThread<Int32Array | null>({ dir: tok.dir!, filesHash: tok.filesHash! }, { kind: "encodeUpTo", text, max, addSpecialTokens });
  return r.ok ? r.value && Array.from(r.value) : undefined;
}
