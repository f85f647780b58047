import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { encodePrefix, loadTokenizer, tokenizersBuilt } from "../../src/io/tokenizer.js";
import { bytesPerToken } from "../../src/io/bytesPerToken.js";
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

test("bytesPerToken bounds the bytes a token stands for: no text of more than n times it encodes to n tokens or fewer", () => {
  const debian = path.join(SHARED, "models", "mha26m-debian");
  // The longest strings: stories260K's "▁friend" (9 bytes); Llama 2's 16 "▁" (48 bytes, for 16 spaces).
  for (const [dir, most] of [[path.join(MODELS, "stories260K"), 9], [debian, 48]] as const) {
    const tok = loadTokenizer(dir);
    assert.equal(tok.bytesPerToken?.(), most, dir);
    const texts = [" friend".repeat(500), " ".repeat(5000), "\n".repeat(3000), "x", "猫😀".repeat(700), "naïve café 日本語 😀👍🏽 ﬁ ① ٣٤ ²", fs.readFileSync(path.join(FIXTURES, "text", "tinystories.txt"), "utf8").slice(0, 20_000)];
    for (const text of texts) {
      const n = tok.encode(text).length;
      assert.ok(Buffer.byteLength(text) <= n * most, `${path.basename(dir)}: ${n} tokens for ${Buffer.byteLength(text)} bytes of ${JSON.stringify(text.slice(0, 20))}…`);
    }
  }
  const tj = JSON.parse(fs.readFileSync(path.join(MODELS, "stories260K", "tokenizer.json"), "utf8"));
  const model = tj.model as Record<string, unknown>;
  const vocab = model["vocab"] as Record<string, number>;
  const noBytes = Object.fromEntries(Object.entries(vocab).filter(([t]) => !/^<0x[0-9A-F]{2}>$/.test(t)));
  // Whatever can shrink or drop text, or fold a run of it into one token, leaves nothing to bound with.
  const unbounded: [string, Record<string, unknown>][] = [
    ["NFC (composes characters)", { ...tj, normalizer: { type: "NFC" } }],
    ["lowercasing", { ...tj, normalizer: { type: "Sequence", normalizers: [...tj.normalizer.normalizers, { type: "Lowercase" }] } }],
    ["a Replace that shortens", { ...tj, normalizer: { type: "Replace", pattern: { String: "  " }, content: " " } }],
    ["whitespace splitting (drops spaces)", { ...tj, pre_tokenizer: { type: "WhitespaceSplit" } }],
    ["an added token that strips the spaces before it", { ...tj, added_tokens: [...tj.added_tokens, { id: 0, content: "<unk>", lstrip: true }] }],
    ["unknown pieces fused (no byte tokens)", { ...tj, model: { ...model, vocab: noBytes, unk_token: "<unk>", fuse_unk: true } }],
    ["unknown pieces dropped (no unknown token)", { ...tj, model: { ...model, vocab: noBytes, unk_token: null } }],
    ["WordPiece", { ...tj, model: { type: "WordPiece", vocab, unk_token: "<unk>" } }],
  ];
  for (const [what, json] of unbounded) assert.equal(bytesPerToken(json), null, what);
  // An unknown token of its own per piece: a piece is at most a character or a merge's result.
  assert.equal(bytesPerToken({ ...tj, model: { ...model, vocab: noBytes, unk_token: "<unk>", fuse_unk: false } }), 9);
  // Byte-level (Llama 3): every byte has its character, every merge its token.
  let extra = 0;
  const alphabet = Array.from({ length: 256 }, (_, b) => String.fromCodePoint((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? b : 256 + extra++));
  const byteLevel = { added_tokens: [{ id: 258, content: "<|begin_of_text|>" }], normalizer: null, pre_tokenizer: { type: "Sequence", pretokenizers: [{ type: "Split", pattern: { Regex: "\\s+" }, behavior: "Isolated" }, { type: "ByteLevel" }] }, model: { type: "BPE", unk_token: null, byte_fallback: false, fuse_unk: false, vocab: Object.fromEntries([...alphabet, "Ġt", "Ġth"].map((c, i) => [c, i])), merges: [["Ġ", "t"], ["Ġt", "h"]] } };
  assert.equal(bytesPerToken(byteLevel), "<|begin_of_text|>".length);
  assert.equal(bytesPerToken({ ...byteLevel, model: { ...byteLevel.model, merges: [["Ġ", "t"], ["h", "e"]] } }), null, "a merge whose result is not a token would be dropped");
});

/** A copy of stories260K's tokenizer files with tokenizer_config.json changed by `edit` (a key set to undefined is removed). */
function tokenizerWith(edit: Record<string, unknown>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-tok-"));
  fs.copyFileSync(path.join(MODELS, "stories260K", "tokenizer.json"), path.join(dir, "tokenizer.json"));
  const tc = JSON.parse(fs.readFileSync(path.join(MODELS, "stories260K", "tokenizer_config.json"), "utf8"));
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify({ ...tc, ...edit }));
  return dir;
}

test("tokenizer_config.json's add_bos_token / add_eos_token are obeyed as transformers obeys them", () => {
  const plain = loadTokenizer(path.join(MODELS, "stories260K")).encode("Hello there", { addSpecialTokens: true });
  assert.equal(plain[0], 1);
  assert.deepEqual(loadTokenizer(tokenizerWith({ add_bos_token: false })).encode("Hello there", { addSpecialTokens: true }), plain.slice(1));
  assert.deepEqual(loadTokenizer(tokenizerWith({ add_eos_token: true })).encode("Hello there", { addSpecialTokens: true }), [...plain, 2]);
  assert.deepEqual(loadTokenizer(tokenizerWith({ add_eos_token: true })).encode("Hello there"), plain.slice(1), "not without special tokens");
});

test("decode drops ids the tokenizer does not hold (a vocabulary padded past it), as HF does; spaces are not cleaned unless the config asks", () => {
  const tok = loadTokenizer(path.join(MODELS, "stories260K"));
  const ids = tok.encode("The cat sat.");
  assert.equal(tok.decode([...ids, 600, 99999, -1]), tok.decode(ids));
  assert.equal(tok.decode([600]), "");
  const text = `He said , "I do n't know" . Is it ?`;
  assert.equal(loadTokenizer(tokenizerWith({ clean_up_tokenization_spaces: undefined })).decode(tok.encode(text)), text);
  // null reads as False in transformers (the JS library alone would read it as true).
  const unset = loadTokenizer(tokenizerWith({ clean_up_tokenization_spaces: null }));
  assert.deepEqual([unset.decode(tok.encode(text)), unset.cleansUpSpaces], [text, false]);
  const cleaning = loadTokenizer(tokenizerWith({ clean_up_tokenization_spaces: true }));
  assert.deepEqual([cleaning.decode(tok.encode(text)), cleaning.cleansUpSpaces], [`He said, "I don't know". Is it?`, true]);
  assert.equal(cleaning.decode(tok.encode(text), { cleanUpSpaces: false }), text, "the decoder's text, for a stream to clean as one text");
});

test("a long text with special-token literals encodes in pieces to the ids of one encode (the stretch after a literal gets its own ▁)", async () => {
  const { encodeLong, splitIsExact } = await import("../../src/io/encodeLong.js");
  for (const dir of [path.join(MODELS, "stories260K"), path.join(SHARED, "models", "mha26m-debian")]) {
    if (!fs.existsSync(dir)) continue;
    const tok = loadTokenizer(dir);
    const text = "Once upon a time there was a cat.\n</s>The cat sat on the mat.\n<s>She smiled. A </s>mid-line one\n".repeat(60);
    assert.ok(splitIsExact(tok), dir);
    assert.deepEqual([...(await encodeLong(tok, text, { pieceChars: 64, workers: 0 }))], tok.encode(text), dir);
  }
});

test("Digits splits at every Unicode number, as the Rust tokenizers do (char::is_numeric), not at ASCII digits alone", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-digits-"));
  const tokens = ["a", "b", "1", "2", "12", "٣", "٤", "٣٤", "²"];
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  const file = (individual: boolean) => ({ version: "1.0", added_tokens: [], normalizer: null, post_processor: null, decoder: null, pre_tokenizer: { type: "Sequence", pretokenizers: [{ type: "Digits", individual_digits: individual }] }, model: { type: "BPE", vocab, merges: ["1 2", "٣ ٤"] } });
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(file(true)));
  const ids = (t: string) => loadTokenizer(dir).encode(t).map((i) => tokens[i]);
  assert.deepEqual(ids("a٣٤b"), ["a", "٣", "٤", "b"], "Arabic-Indic digits one by one");
  assert.deepEqual(ids("a12b"), ["a", "1", "2", "b"]);
  assert.deepEqual(ids("a²b"), ["a", "²", "b"]);
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(file(false)));
  assert.deepEqual(ids("a٣٤b12"), ["a", "٣٤", "b", "12"], "runs of numbers kept whole");
});

test("loads of one folder share a build until its tokenizer files change, even at the same size within the same instant; each caller gets its own object", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-tok-"));
  fs.copyFileSync(path.join(MODELS, "stories260K", "tokenizer.json"), path.join(dir, "tokenizer.json"));
  const tc = JSON.parse(fs.readFileSync(path.join(MODELS, "stories260K", "tokenizer_config.json"), "utf8"));
  const config = (eos: boolean) => JSON.stringify({ ...tc, add_eos_token: eos }).replace('"add_eos_token":true', '"add_eos_token":true ');
  assert.equal(config(true).length, config(false).length);
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), config(false));
  const before = tokenizersBuilt();
  const a = loadTokenizer(dir);
  const b = loadTokenizer(path.relative(process.cwd(), dir)); // the same folder, spelt otherwise
  assert.equal(tokenizersBuilt() - before, 1, "built once");
  const ids = b.encode("Hello there", { addSpecialTokens: true });
  assert.notEqual(ids.at(-1), 2, "no EOS");
  a.encode = () => [];
  assert.deepEqual(b.encode("Hello there", { addSpecialTokens: true }), ids, "b keeps its own encode");

  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), config(true)); // same size, likely the same mtime
  const c = loadTokenizer(dir);
  assert.equal(tokenizersBuilt() - before, 2, "built again");
  assert.equal(c.encode("Hello there", { addSpecialTokens: true }).at(-1), 2, "the edited config is obeyed");
  fs.rmSync(path.join(dir, "tokenizer_config.json"));
  assert.notEqual(loadTokenizer(dir).encode("Hello there", { addSpecialTokens: true }).at(-1), 2, "a removed config is seen");
  assert.equal(tokenizersBuilt() - before, 3);
});
