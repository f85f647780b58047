/** TokenOffsets: text_offset runs on by the texts the tokens add, in code points, less the spaces the clean-up drops; an offset is known once the clean-up has settled the text before it. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { alignOffsets, offsetsOf, TokenOffsets } from "../../src/serve/tokenOffsets.js";

test("without the clean-up, offsets run on by the texts the tokens add, from the base, known at once", () => {
  const t = new TokenOffsets(false, 10);
  const at = ["", "I", " do", " n", "'", "t"].map((x) => t.add(x));
  assert.deepEqual(at.map((a) => t.offset(a)), [10, 10, 11, 14, 16, 17]);
  assert.deepEqual(offsetsOf(["a", " .", " b"], false), { offsets: [0, 1, 3], text: "a . b", end: 5 });
});

test("offsets count code points: a character outside the BMP is one; its bytes before the last add nothing and begin where it does", () => {
  // "a😀b中c": the emoji's and 中's bytes as byte tokens, the last of each adding the character.
  const { offsets, text, end } = offsetsOf(["a", "", "", "", "😀", "b", "", "", "中", "c"], false);
  assert.deepEqual(offsets, [0, 1, 1, 1, 1, 2, 3, 3, 3, 4]);
  assert.equal(end, [...text].length);
  const chars = [...text];
  assert.deepEqual(offsets.map((o, k) => chars.slice(o, offsets[k + 1] ?? end).join("")), ["a", "", "", "", "😀", "b", "", "", "中", "c"]);
});

test("with it, each offset is less the spaces dropped before its token, and waits while one may still be dropped", () => {
  const t = new TokenOffsets(true);
  const tokens = [" I", " do", " n", "'", "t", " ", ".", " 😀", " x"];
  const at: ReturnType<TokenOffsets["add"]>[] = [];
  const known: (number | null)[][] = [];
  for (const x of tokens) {
    at.push(t.add(x));
    known.push(at.map((a) => t.offset(a)));
  }
  // " n" begins where the text " I do" ends; "'" waits until "t" shows the space before "n" is dropped.
  assert.deepEqual(known[2], [0, 2, 5]);
  assert.deepEqual(known[3], [0, 2, 5, null]);
  assert.deepEqual(known[4], [0, 2, 5, 6, 7]);
  t.finish();
  // " I don't. 😀 x": the spaces before "n't" and "." are dropped; the dropped " " token begins where "." does.
  assert.deepEqual(at.map((a) => t.offset(a)), [0, 2, 5, 6, 7, 8, 8, 9, 11]);
  assert.equal(t.end, [..." I don't. 😀 x"].length);
});

test("offsets into a decode are moved into the text as sent where the two differ", () => {
  assert.deepEqual(alignOffsets([0, 0, 5], "hello there", "hello there"), [0, 0, 5]);
  // A leading space the encoding folded (" hello" is one token "▁hello", which decodes to "hello" at the
  // start): the first token begins at 0, so its text is " hello"; those after keep their distance from the end.
  assert.deepEqual(alignOffsets([0, 0, 5], "hello there", " hello there"), [0, 0, 6]);
  // A character normalized in the middle: offsets before it stay, after it keep their distance from the end, inside it go to its start.
  assert.deepEqual(alignOffsets([0, 2, 3, 4, 6], "ab😀😀cd", "abXcd"), [0, 2, 2, 3, 5]);
});

test("a space the decode leaves out before more spaces is placed at the run's start, and belongs to the token whose own text begins with it", () => {
  // "   x y" encodes as BOS, ▁, ▁, ▁, x, ▁y; the decoder strips the first ▁'s space, so the decode is "  x y".
  const tokens = ["<s>", " ", " ", " ", "x", " y"];
  assert.deepEqual(alignOffsets([0, 0, 0, 1, 2, 3], "  x y", "   x y", tokens), [0, 0, 1, 2, 3, 4]);
  // "  lead": BOS, ▁, ▁l, e, ad; " l" begins at the second space, not the first ("x" began at a space before).
  assert.deepEqual(alignOffsets([0, 0, 0, 2, 3], " lead", "  lead", ["<s>", " ", " l", "e", "ad"]), [0, 0, 1, 3, 4]);
  // One folded space: the first word's token keeps it.
  assert.deepEqual(alignOffsets([0, 0, 5], "hello there", " hello there", ["<s>", " hello", " there"]), [0, 0, 6]);
});
