/**
 * The chat API's `bytes` of a token: a token short of a whole character decodes to U+FFFD, but its bytes
 * are its own (a SentencePiece byte-fallback piece's byte, a byte-level BPE piece's bytes), so a client
 * can rebuild the character from several tokens; a whole token's bytes are its text's.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { tokenBytes } from "../../src/serve/tokenBytes.js";
import { MODELS } from "../helpers.js";

test("tokenBytes: byte-fallback and byte-level pieces give their own bytes, not U+FFFD's; whole tokens their text's", () => {
  const tok = loadTokenizer(path.join(MODELS, "stories260K"));
  let e4 = -1;
  for (let id = 0; id < tok.vocabSize && e4 < 0; id++) if (tok.idToToken?.(id) === "<0xE4>") e4 = id;
  assert.ok(e4 >= 0, "the Llama-2 tokenizer has byte-fallback pieces");
  assert.equal(tok.decode([e4]), "\uFFFD");
  assert.deepEqual(tokenBytes(tok, e4, "\uFFFD"), [0xe4]);
  // "中" is E4 B8 AD: three byte pieces that together are the character.
  const pieces = ["<0xE4>", "<0xB8>", "<0xAD>"].map((p) => Array.from({ length: tok.vocabSize }, (_, i) => i).find((i) => tok.idToToken?.(i) === p)!);
  assert.equal(Buffer.from(pieces.flatMap((id) => tokenBytes(tok, id, "\uFFFD"))).toString("utf8"), "中");
  const once = tok.encode(" Once")[0]!;
  assert.deepEqual(tokenBytes(tok, once, "Once"), [...Buffer.from("Once")]);
  // A byte-level piece (GPT-2's alphabet: "Ġ" spells the space, "ä" the byte 0xE4).
  const byteLevel = { idToToken: () => "Ġä" } as unknown as TextTokenizer;
  assert.deepEqual(tokenBytes(byteLevel, 0, " \uFFFD"), [0x20, 0xe4]);
  // Text with a real U+FFFD in a piece outside those alphabets: the text's bytes.
  assert.deepEqual(tokenBytes({ idToToken: () => "▁\uFFFD" } as unknown as TextTokenizer, 0, " \uFFFD"), [0x20, 0xef, 0xbf, 0xbd]);
});
