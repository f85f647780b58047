/** TextStream: streamed pieces add up to the decoded text, characters split over byte tokens come whole, stop strings cut. */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { cleanUpSpaces } from "../../src/io/cleanUpSpaces.js";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { TextStream } from "../../src/serve/textStream.js";
import { MODELS, SHARED, seededRand, tmpDir } from "../helpers.js";

const tok = loadTokenizer(path.join(MODELS, "stories260K"));

/** The pieces a stream gives out for `text` continuing `prompt`, token by token. */
function stream(prompt: string, text: string, stops: string[] = [], tokenizer: TextTokenizer = tok): { pieces: string[]; all: string; stopped: boolean } {
  const p = tokenizer.encode(prompt, { addSpecialTokens: true });
  const ids = tokenizer.encode(prompt + text, { addSpecialTokens: true }).slice(p.length);
  return streamIds(tokenizer, p, ids, stops);
}

function streamIds(tokenizer: TextTokenizer, prompt: number[], ids: readonly number[], stops: string[] = []): { pieces: string[]; all: string; stopped: boolean } {
  const s = new TextStream(tokenizer, prompt, stops);
  const pieces = ids.map((id) => s.push(id));
  pieces.push(s.finish());
  assert.equal(pieces.join(""), s.output, "the text given out is the text a plain answer returns");
  return { pieces, all: pieces.join(""), stopped: s.hitStop };
}

/** A copy of the tokenizer files in `dir` whose tokenizer_config.json sets clean_up_tokenization_spaces: true. */
function cleaningCopy(dir: string): TextTokenizer {
  const copy = tmpDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(dir, f), path.join(copy, f));
  const cfg = path.join(copy, "tokenizer_config.json");
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, "utf8")), clean_up_tokenization_spaces: true }));
  return loadTokenizer(copy);
}

test("the pieces add up to the text the ids decode to, leading spaces included", () => {
  const r = stream("Once upon a time", " there was a little girl named Lily. She loved to play.");
  assert.equal(r.all, " there was a little girl named Lily. She loved to play.");
  assert.ok(r.pieces.filter((x) => x).length > 5, "given out as it comes, not all at the end");
});

test("a character spread over byte tokens is given out whole, never as U+FFFD", () => {
  const text = " café ☕ naïve 日本";
  const ids = tok.encode("Hi" + text, { addSpecialTokens: true });
  assert.ok(ids.length > tok.encode("Hi", { addSpecialTokens: true }).length + 8, "the text is spread over byte tokens");
  const r = stream("Hi", text);
  assert.equal(r.all, text);
  for (const piece of r.pieces) assert.ok(!piece.includes("\uFFFD"), `piece ${JSON.stringify(piece)}`);
});

test("a stop string ends the text before it, even when split over tokens, and holds back what may begin one", () => {
  const r = stream("Once", " upon a time. The end. More text", ["The end"]);
  assert.equal(r.all, " upon a time. ");
  assert.equal(r.stopped, true);
  // Nothing given out ever contained the start of "The end" that turned out to be it.
  let given = "";
  for (const p of r.pieces) {
    given += p;
    assert.ok(!given.includes("The"), `given ${JSON.stringify(given)}`);
  }
  const none = stream("Once", " upon a time. Then", ["The end"]);
  assert.equal(none.all, " upon a time. Then", "a held-back start that was not a stop string comes out at the end");
  assert.equal(none.stopped, false);
});

test("the first of several stop strings wins, and a stop at the very start leaves no text", () => {
  assert.equal(stream("Once", " a b c d", ["c", "b"]).all, " a ");
  assert.equal(stream("Once", "\n\nx", ["\n"]).all, "");
});

test("a long text streams in pieces that add up to it", () => {
  const text = " " + "The little dog ran to the park and saw a big red ball. ".repeat(20);
  assert.equal(stream("Once", text).all, text);
});

test("a prompt of ids ending inside a character: the completion gives the character whole", () => {
  const ids = tok.encode("Hi ☕5", { addSpecialTokens: true });
  const base = tok.encode("Hi ", { addSpecialTokens: true }).length;
  assert.equal(ids.length - base, 4, "☕ is three byte tokens, then 5");
  // The prompt ends after the first byte of ☕.
  const s = new TextStream(tok, ids.slice(0, base + 1));
  const pieces = ids.slice(base + 1).map((id) => s.push(id));
  pieces.push(s.finish());
  assert.equal(pieces.join(""), "☕5");
  assert.equal(pieces[1], "☕", "given out once complete, not at the end");
});

test("special tokens add no text, and the stream goes on after them", () => {
  const p = tok.encode("Once", { addSpecialTokens: true });
  const s = new TextStream(tok, p);
  const more = tok.encode("Once upon", { addSpecialTokens: true }).slice(p.length);
  const out = [s.push(2), s.push(1), ...more.map((id) => s.push(id)), s.finish()].join("");
  assert.equal(out, " upon");
});

test("a tokenizer that cleans up spaces: the completion is cleaned as one text, a match across tokens included, and only what may still change waits", () => {
  const cleaning = cleaningCopy(path.join(MODELS, "stories260K"));
  const r = stream("Once", " I do n't know . He 's here , is n't he ?", [], cleaning);
  assert.equal(r.all, " I don't know. He's here, isn't he?");
  // " n", "'", "t": nothing until "t" makes it " n't"; then "n't" at once.
  const dont = stream("Once", " I do n't play", [], cleaning);
  assert.deepEqual(dont.pieces, [" I", " do", "", "", "n't", " play", ""]);
  assert.deepEqual(stream("Once", " I do n't play").pieces, [" I", " do", " n", "'", "t", " play", ""], "without the clean-up nothing waits for it");
});

test("stop strings are found in the cleaned-up text: one only the clean-up makes ends it, one it removes does not", () => {
  const cleaning = cleaningCopy(path.join(MODELS, "stories260K"));
  const text = " I do n't know . He is here";
  assert.equal(stream("Once", text, ["don't"], cleaning).all, " I ");
  assert.equal(stream("Once", text, ["."], cleaning).all, " I don't know", "no space before the stop: the clean-up took it");
  const none = stream("Once", text, [" ."], cleaning);
  assert.deepEqual([none.all, none.stopped], [" I don't know. He is here", false]);
  assert.equal(stream("Once", text, [" ."]).all, " I do n't know", "without the clean-up the text holds it");
});

test("property: random ids, clean-up on and off, with and without stop strings: the pieces are the completion's text cleaned up as one text, cut at the first stop", () => {
  const llama2 = path.join(SHARED, "models", "mha26m-debian");
  const dirs = [path.join(MODELS, "stories260K"), ...(fs.existsSync(llama2) ? [llama2] : [])];
  const rand = seededRand(31, Float64Array);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(((rand(1)[0]! + 1) / 2) * xs.length)]!;
  const stopSets = [[], ["."], ["n't", "!"], ["'s"], [" ,", "?"]];
  for (const dir of dirs) {
    const cleaning = cleaningCopy(dir);
    // The same tokenizer, its stream left as decoded: the text the clean-up is applied to.
    const raw: TextTokenizer = { ...cleaning, cleansUpSpaces: false };
    const prompt = cleaning.encode("Once upon a time", { addSpecialTokens: true });
    const pieces = cleaning.encode("x . , ? ! ' n't 's 've 're 'm n' 'v 'r do is We ' re", { addSpecialTokens: false });
    for (let k = 0; k < 60; k++) {
      // Ids from the pieces the clean-up reads; every third sequence, half of them anywhere (byte tokens too) past the special ones.
      const plain = k % 3 !== 0;
      const ids = Array.from({ length: 1 + Math.floor(((rand(1)[0]! + 1) / 2) * 50) }, () => (plain || rand(1)[0]! > 0 ? pick(pieces) : 3 + Math.floor(((rand(1)[0]! + 1) / 2) * (cleaning.vocabSize - 3))));
      const stops = stopSets[k % stopSets.length]!;
      const whole = cleanUpSpaces(streamIds(raw, prompt, ids).all);
      const at = Math.min(...stops.map((s) => whole.indexOf(s)).filter((i) => i >= 0), whole.length);
      const got = streamIds(cleaning, prompt, ids, stops);
      assert.equal(got.all, whole.slice(0, at), `${dir} sequence ${k} ${ids.join(",")} stops ${JSON.stringify(stops)}`);
      assert.equal(got.stopped, at < whole.length);
      // The prompt ends where no clean-up reaches across: prompt and completion read as the whole decode (transformers').
      if (plain) assert.equal("Once upon a time" + whole, cleaning.decode([...prompt, ...ids], { skipSpecialTokens: true }));
    }
  }
});

test("a text prompt ending in U+FFFD (the character itself, as a text holds it): the completion does not repeat it; ids ending so are still read as a character's first bytes", () => {
  const prompt = tok.encode("Once \uFFFD", { addSpecialTokens: true });
  assert.ok(tok.decode(prompt).endsWith("\uFFFD"), "the prompt's decode ends in U+FFFD");
  const next = tok.encode("Once \uFFFD. A", { addSpecialTokens: true }).slice(prompt.length);
  const whole = new TextStream(tok, prompt, [], { promptWhole: true });
  const text = next.map((id) => whole.push(id)).join("") + whole.finish();
  assert.equal(text, ". A", "only what the new ids add");
  // The same ids sent as ids: they may end inside a character, so their last U+FFFD-decoding ids count as the completion's.
  const asIds = new TextStream(tok, prompt);
  assert.ok((next.map((id) => asIds.push(id)).join("") + asIds.finish()).startsWith("\uFFFD"));
});
