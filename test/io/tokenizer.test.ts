import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { FIXTURES, GOLDEN, MODELS } from "../helpers.js";

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
