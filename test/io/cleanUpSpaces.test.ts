/**
 * cleanUpSpaces is transformers' clean_up_tokenization, and SpaceCleaner applies it to a text arriving
 * in pieces: the pieces add up to the whole text's clean-up however the text is cut (a rule's match
 * across a cut, one rule's match made by another's), holding back only an end a later piece may clean.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { cleanUpSpaces, SpaceCleaner } from "../../src/io/cleanUpSpaces.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { MODELS, SHARED, seededRand, tmpDir } from "../helpers.js";

/** transformers' PreTrainedTokenizerBase.clean_up_tokenization, as written there (str.replace, in order). */
function reference(s: string): string {
  return s.replaceAll(" .", ".").replaceAll(" ?", "?").replaceAll(" !", "!").replaceAll(" ,", ",").replaceAll(" ' ", "'").replaceAll(" n't", "n't").replaceAll(" 'm", "'m").replaceAll(" 's", "'s").replaceAll(" 've", "'ve").replaceAll(" 're", "'re");
}

/** Random texts over the characters the rules read (many spaces and apostrophes), and one other. */
function randomTexts(seed: number, count: number, length: number): string[] {
  const rand = seededRand(seed, Float64Array);
  const chars = "  ''.?!,ntmsvrex";
  return Array.from({ length: count }, () => Array.from(rand(length), (x) => chars[Math.floor(((x + 1) / 2) * chars.length)]).join(""));
}

/** The text cut into pieces of 0 to 4 characters, pushed one by one; the pieces given out and the rest. */
function streamed(text: string, rand: (n: number) => Float64Array): string[] {
  const c = new SpaceCleaner(true);
  const out: string[] = [];
  for (let at = 0; at < text.length; ) {
    const n = Math.floor(((rand(1)[0]! + 1) / 2) * 5);
    out.push(c.push(text.slice(at, at + n)));
    at += n;
  }
  out.push(c.finish());
  return out;
}

test("cleanUpSpaces is transformers' clean_up_tokenization, and what the tokenizer's decode applies", () => {
  for (const t of randomTexts(3, 400, 30)) assert.equal(cleanUpSpaces(t), reference(t), JSON.stringify(t));
  assert.equal(cleanUpSpaces("I do n't know . He 's here , is n't he ? We ' re"), "I don't know. He's here, isn't he? We're");
  // The decode of a tokenizer whose config asks for the clean-up is the decoder's text cleaned up.
  const dir = tmpDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(MODELS, "stories260K", f), path.join(dir, f));
  const cfg = path.join(dir, "tokenizer_config.json");
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, "utf8")), clean_up_tokenization_spaces: true }));
  const tok = loadTokenizer(dir);
  assert.equal(tok.cleansUpSpaces, true);
  const rand = seededRand(4, Float64Array);
  for (let k = 0; k < 50; k++) {
    const ids = Array.from(rand(40), (x) => 3 + Math.floor(((x + 1) / 2) * (tok.vocabSize - 3)));
    assert.equal(tok.decode(ids), cleanUpSpaces(tok.decode(ids, { cleanUpSpaces: false })));
  }
});

test("pieces add up to the whole text's clean-up however the text is cut", () => {
  const rand = seededRand(9, Float64Array);
  for (const t of randomTexts(5, 600, 40)) assert.equal(streamed(t, rand).join(""), cleanUpSpaces(t), JSON.stringify(t));
  // A rule's match across a cut, and one made by an earlier rule's (" ' " → "'" makes " n't" and " 'm").
  const cuts: [string[], string][] = [
    [["I do n", "'t"], "I don't"],
    [["I do", " ", "n", "'", "t"], "I don't"],
    [["a n ", "'", " t"], "an't"],
    [["a  ' ", "m"], "a'm"],
    [["yes ", "!"], "yes!"],
    [["a ' ", "!"], "a '!"],
    [["We 'v", "e ", "."], "We've."],
  ];
  for (const [pieces, whole] of cuts) {
    const c = new SpaceCleaner(true);
    assert.equal(pieces.map((p) => c.push(p)).join("") + c.finish(), whole, JSON.stringify(pieces));
    assert.equal(cleanUpSpaces(pieces.join("")), whole);
  }
});

test("only an end a later piece may still clean is held back; off, text passes as it comes", () => {
  const given = (text: string) => new SpaceCleaner(true).push(text);
  // Ends no rule can take further: all of it at once.
  for (const t of ["Hello", "I don't", "x.", "He's", "then", "for", "I've", "a ' b", "ok!"]) assert.equal(given(t), cleanUpSpaces(t), t);
  // Ends that begin a pattern (after the rules before it): held, the rest given.
  const held: [string, string][] = [
    ["Hello ", "Hello"],
    ["I do n", "I do"],
    ["I do n'", "I do"],
    ["He '", "He"],
    ["We 'v", "We"],
    ["They 'r", "They"],
    ["x  ' ", "x"],
  ];
  for (const [t, out] of held) assert.equal(given(t), out, t);
  const off = new SpaceCleaner(false);
  assert.deepEqual(["I do n", "'t ", "."].map((p) => off.push(p)), ["I do n", "'t ", "."]);
  assert.equal(off.finish(), "");
});

test("offsetOf: a position in the text pushed, in the cleaned text (less the spaces dropped before it)", () => {
  const c = new SpaceCleaner(true);
  assert.equal(c.push("x n't . y"), "xn't. y");
  assert.equal(c.settled, 9);
  // Dropped: the space at 1 (" n't") and at 5 (" .").
  assert.deepEqual([0, 1, 2, 5, 6, 7, 9].map((i) => c.offsetOf(i)), [0, 1, 1, 4, 4, 5, 7]);
});

test("the Llama 2 tokenizer's decode is cleaned as transformers cleans it", { skip: !fs.existsSync(path.join(SHARED, "models", "mha26m-debian")) }, () => {
  const dir = tmpDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(SHARED, "models", "mha26m-debian", f), path.join(dir, f));
  const cfg = path.join(dir, "tokenizer_config.json");
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, "utf8")), clean_up_tokenization_spaces: true }));
  const tok = loadTokenizer(dir);
  const ids = tok.encode("I do n't know . He 's here , is n't he ?");
  assert.equal(tok.decode(ids), "I don't know. He's here, isn't he?");
  assert.equal(tok.decode(ids, { cleanUpSpaces: false }), "I do n't know . He 's here , is n't he ?");
});
