/** TextStream: streamed pieces add up to the decoded text, characters split over byte tokens come whole, stop strings cut. */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { TextStream } from "../../src/serve/textStream.js";
import { MODELS } from "../helpers.js";

const tok = loadTokenizer(path.join(MODELS, "stories260K"));

/** The pieces a stream gives out for `text` continuing `prompt`, token by token. */
function stream(prompt: string, text: string, stops: string[] = []): { pieces: string[]; all: string; stopped: boolean } {
  const p = tok.encode(prompt, { addSpecialTokens: true });
  const ids = tok.encode(prompt + text, { addSpecialTokens: true }).slice(p.length);
  const s = new TextStream(tok, p, stops);
  const pieces = ids.map((id) => s.push(id));
  pieces.push(s.finish());
  return { pieces, all: pieces.join(""), stopped: s.hitStop };
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
