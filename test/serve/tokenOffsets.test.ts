/** TokenOffsets: text_offset runs on by the tokens' texts, less the spaces the clean-up drops; an offset is known once the clean-up has settled the text before it. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { offsetsOf, TokenOffsets } from "../../src/serve/tokenOffsets.js";

test("without the clean-up, offsets run on by the tokens' texts, from the base, known at once", () => {
  const t = new TokenOffsets(false, 10);
  const at = ["<s>", " I", " do", " n", "'", "t"].map((x) => t.add(x));
  assert.deepEqual(at.map((a) => t.offset(a)), [10, 13, 15, 18, 20, 21]);
  assert.deepEqual(offsetsOf(["a", " .", " b"], false), { offsets: [0, 1, 3], end: 5 });
});

test("with it, each offset is less the spaces dropped before its token, and waits while one may still be dropped", () => {
  const t = new TokenOffsets(true);
  const tokens = [" I", " do", " n", "'", "t", " ", ".", " x"];
  const at: number[] = [];
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
  // " I don't. x": the spaces before "n't" and "." are dropped; the dropped " " token begins where "." does.
  assert.deepEqual(at.map((a) => t.offset(a)), [0, 2, 5, 6, 7, 8, 8, 9]);
  assert.equal(t.end, " I don't. x".length);
});
