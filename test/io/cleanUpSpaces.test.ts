/**
 * cleanUpSpaces is transformers' clean_up_tokenization, and SpaceCleaner applies it to a text arriving
 * in pieces: the pieces add up to the whole text's clean-up however the text is cut (a rule's match
 * across a cut, one rule's match made by another's), holding back only the characters a later piece
 * may still clean, and giving out the rest at once (of a run of spaces, all but the last two).
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
    ["x n ' ", "x"],
    ["x  ' v", "x"],
  ];
  for (const [t, out] of held) assert.equal(given(t), out, t);
  // An earlier " ' " took the space of a last " '": nothing across the end can match, so all of it.
  assert.equal(given("a ' '"), "a''");
  const off = new SpaceCleaner(false);
  assert.deepEqual(["I do n", "'t ", "."].map((p) => off.push(p)), ["I do n", "'t ", "."]);
  assert.equal(off.finish(), "");
});

/** Texts made of what the rules read: words, contractions whole and cut, quotes, punctuation, runs of 0 to 5 spaces. */
function spacedTexts(seed: number, count: number, parts: number): string[] {
  const rand = seededRand(seed, Float64Array);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(((rand(1)[0]! + 1) / 2) * xs.length)]!;
  const words = ["I", "do", "n't", "n", "'t", "'", "'m", "'s", "'ve", "'re", "'v", "'r", "e", "t", ".", "?", "!", ",", "x", "then"];
  return Array.from({ length: count }, () => Array.from({ length: parts }, () => " ".repeat(pick([0, 1, 1, 2, 3, 4, 5])) + pick(words)).join(""));
}

test("property: every split of texts with runs of spaces and contractions streams the whole text's clean-up", () => {
  const rand = seededRand(21, Float64Array);
  for (const t of spacedTexts(17, 300, 12)) {
    const whole = cleanUpSpaces(t);
    for (let k = 0; k < 20; k++) {
      // Cut at a random set of points (about one in three), pieces of one character included.
      const cuts = [0, ...Array.from(rand(t.length), (x, i) => (x > 0.33 ? i : -1)).filter((i) => i > 0), t.length];
      const c = new SpaceCleaner(true);
      let out = "";
      for (let j = 1; j < cuts.length; j++) {
        out += c.push(t.slice(cuts[j - 1], cuts[j]));
        assert.ok(whole.startsWith(out), `${JSON.stringify(t)} cut at ${cuts}: ${JSON.stringify(out)} given out`);
      }
      assert.equal(out + c.finish(), whole, `${JSON.stringify(t)} cut at ${cuts}`);
    }
  }
});

test("what is given out is all that no continuation can change, and the rest cleans on its own", () => {
  // Every text of up to 4 characters the rules read, against every continuation of up to 3: given out
  // is the longest start all continuations agree on, and given + clean(held + continuation) is clean(all).
  const chars = " .'ntmx";
  const upTo = (n: number): string[] => (n === 0 ? [""] : [...upTo(n - 1), ...upTo(n - 1).filter((s) => s.length === n - 1).flatMap((s) => [...chars].map((ch) => s + ch))]);
  const continuations = upTo(3);
  for (const t of upTo(4)) {
    const c = new SpaceCleaner(true);
    const given = c.push(t);
    const held = t.slice(c.settled);
    const alls = continuations.map((b) => cleanUpSpaces(t + b));
    let agreed = alls[0]!.length;
    for (const a of alls) while (!a.startsWith(alls[0]!.slice(0, agreed))) agreed--;
    assert.equal(given, alls[0]!.slice(0, agreed), `${JSON.stringify(t)}: the start every continuation agrees on`);
    continuations.forEach((b, i) => assert.equal(given + cleanUpSpaces(held + b), alls[i], `${JSON.stringify(t)} + ${JSON.stringify(b)}`));
  }
});

test("after a run of 3 or more spaces, text comes out as soon as it can: all but the run's last two spaces at once", () => {
  const stream = (pieces: string[]) => {
    const c = new SpaceCleaner(true);
    return [...pieces.map((p) => c.push(p)), c.finish()];
  };
  // The run's first spaces come out with it; the last two wait (" ' " then " 'm" can drop both).
  assert.deepEqual(stream(["code:\n", "        ", "return", " x"]), ["code:\n", "      ", "  return", " x", ""]);
  assert.deepEqual(stream(["x   ", "' m"]), ["x ", "'m", ""]);
  assert.deepEqual(stream(["x   ", "."]), ["x ", " .", ""]);
  // A start of a contraction after the run: the run up to its last space comes out, " n" waits.
  assert.deepEqual(stream(["a    n", "'t"]), ["a   ", "n't", ""]);
  assert.deepEqual(stream(["a    n", "o"]), ["a   ", " no", ""]);
  // After " ' " matched in the text itself: the quote comes out, not only what is before it.
  assert.deepEqual(stream(["x '   ", "y"]), ["x'", "  y", ""]);
  // Offsets of the text given out are known as soon as it is.
  const c = new SpaceCleaner(true);
  c.push("x . y     ");
  assert.equal(c.settled, 8);
  assert.equal(c.offsetOf(8), 7);
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
