import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { encodePrefix, loadTokenizer } from "../../src/io/tokenizer.js";
import { FIXTURES, GOLDEN, MODELS, SHARED } from "../helpers.js";

const goldenIds = JSON.parse(fs.readFileSync(path.join(GOLDEN, "tokenizer_ids.json"), "utf8")) as { texts: Record<string, { ids: number[]; ids_with_bos: number[] }> };
const tok = loadTokenizer(path.join(MODELS, "stories260K"));

for (const [name, want] of Object.entries(goldenIds.texts)) {
  if (name === "prompt") continue;
  test(`token ids of fixtures/text/${name} equal the HF tokenizer's`, () => {
    const text = fs.readFileSync(path.join(FIXTURES, "text", name), "utf8");
    assert.deepEqual(tok.encode(text), want.ids);
    assert.deepEqual(tok.encode(text, { addSpecialTokens: true }).slice(0, 8), want.ids_with_bos);
  });
}

test("decode inverts encode on plain text", () => {
  const s = "Once upon a time, there was a dog.";
  assert.equal(tok.decode(tok.encode(s)), s);
});

test("a missing tokenizer.json is a clear error", () => {
  assert.throws(() => loadTokenizer(FIXTURES), (e: Error) => /tokenizer\.json does not exist/.test(e.message) && /hint:/.test(e.message));
});

test("encodePrefix gives the first N ids of the whole text's encoding, tokenizing only a prefix", () => {
  const tok = loadTokenizer(path.join(SHARED, "models", "mha26m-debian"));
  const text = fs.readFileSync(path.join(SHARED, "data", "text", "debian_dev_val.txt"), "utf8").slice(0, 250_000);
  const all = tok.encode(text, { addSpecialTokens: false });
  for (const n of [1, 1000, 20_000]) assert.deepEqual(encodePrefix(tok, text, n), all.slice(0, n), `first ${n}`);
  assert.deepEqual(encodePrefix(tok, text, all.length + 10), all, "a short text is encoded whole");
  const cutMidWord = "lorem ipsum ".repeat(3000);
  assert.deepEqual(encodePrefix(tok, cutMidWord, 2000), tok.encode(cutMidWord, { addSpecialTokens: false }).slice(0, 2000), "no line breaks: cut mid-text");
});
