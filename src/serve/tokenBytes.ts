/**
 * The UTF-8 bytes a token adds to the text (the chat API's `bytes`, which lets a client rebuild a
 * character split over several tokens). A token short of a whole character decodes to U+FFFD, whose
 * bytes are not the token's: a SentencePiece byte-fallback piece ("<0xE4>") is its byte, and a
 * byte-level BPE piece (GPT-2, Llama 3: each byte spelt as one printable character) maps back through
 * that alphabet. Any other token: the bytes of its text.
 */
import type { TextTokenizer } from "../io/tokenizer.js";

/** GPT-2's bytes_to_unicode, inverted: the character that spells a byte → the byte. */
const BYTE_OF = (() => {
  const bytes: number[] = [];
  for (const [lo, hi] of [[0x21, 0x7e], [0xa1, 0xac], [0xae, 0xff]] as const) for (let b = lo; b <= hi; b++) bytes.push(b);
  const chars = [...bytes];
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + n++);
    }
  return new Map(chars.map((c, i) => [String.fromCharCode(c), bytes[i]!]));
})();

export function tokenBytes(tokenizer: TextTokenizer, id: number, text: string): number[] {
  if (text.includes("\uFFFD")) {
    const piece = tokenizer.idToToken?.(id);
    if (piece !== undefined) {
      const fallback = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
      if (fallback) return [parseInt(fallback[1]!, 16)];
      const chars = [...piece];
      if (chars.length > 0 && chars.every((c) => BYTE_OF.has(c))) return chars.map((c) => BYTE_OF.get(c)!);
    }
  }
  return [...Buffer.from(text, "utf8")];
}
