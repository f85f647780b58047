/** generate's stdout writer: when it streams, what it writes as tokens come, and a decode it cannot stream exactly. */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { generateOutput } from "../../src/cli/generateOutput.js";
import { loadTokenizer, type TextTokenizer } from "../../src/io/tokenizer.js";
import { MODELS, tmpDir } from "../helpers.js";

const tok = loadTokenizer(path.join(MODELS, "stories260K"));

function writer(tokenizer: TextTokenizer, prompts: number[][], chat = false) {
  const writes: string[] = [], warnings: string[] = [];
  const out = generateOutput({ tokenizer, prompts, chat, bos: 1, stops: new Set([2]), write: (s) => void writes.push(s), log: { info: () => {}, warn: (m) => void warnings.push(m) } });
  return { out, writes, warnings };
}

test("one prompt: the prompt goes out at begin(), the continuation token by token, the stop token and BOS never", () => {
  const prompt = tok.encode("Once upon a time", { addSpecialTokens: true });
  const more = tok.encode("Once upon a time there was a dog named Max.", { addSpecialTokens: true }).slice(prompt.length);
  const { out, writes } = writer(tok, [prompt]);
  assert.equal(out.streaming, true);
  assert.deepEqual(writes, [], "nothing before generate has taken its options");
  out.begin();
  assert.equal(writes.join(""), "Once upon a time");
  for (const t of [...more, 1, 2]) out.onToken(0, t);
  assert.ok(writes.length > 5, "written as the tokens came");
  out.end([{ ids: [...more, 1, 2] }]);
  assert.equal(writes.join(""), "Once upon a time there was a dog named Max.\n");
});

test("several prompts: nothing streams; each text after its --- line at the end", () => {
  const prompts = [tok.encode("Once", { addSpecialTokens: true }), tok.encode("Tom", { addSpecialTokens: true })];
  const { out, writes } = writer(tok, prompts);
  assert.equal(out.streaming, false);
  out.begin();
  for (const t of tok.encode(" upon", { addSpecialTokens: false })) out.onToken(0, t);
  assert.deepEqual(writes, [], "nothing streams");
  out.end([{ ids: tok.encode(" upon", { addSpecialTokens: false }) }, { ids: [...tok.encode(" ran", { addSpecialTokens: false }), 2] }]);
  assert.equal(writes.join(""), "--- 1\nOnce upon\n--- 2\nTom ran\n");
});

// Ctrl-C: generate stops after its step and prints what it had, where it used to exit with the text of
// several prompts lost and a streamed one cut mid-line.
test("stopped early: several prompts print their partial texts as end() would; one prompt ends its stream with the held-back text and a newline", () => {
  const prompts = [tok.encode("Once", { addSpecialTokens: true }), tok.encode("Tom", { addSpecialTokens: true })];
  const many = writer(tok, prompts);
  many.out.begin();
  for (const t of tok.encode(" upon a", { addSpecialTokens: false })) many.out.onToken(0, t);
  for (const t of [...tok.encode(" ran", { addSpecialTokens: false }), 2]) many.out.onToken(1, t);
  many.out.stopped();
  assert.equal(many.writes.join(""), "--- 1\nOnce upon a\n--- 2\nTom ran\n");

  // "é" is two byte tokens in stories260K's vocabulary: a stop between them printed nothing of it.
  const prompt = tok.encode("Once", { addSpecialTokens: true });
  const more = tok.encode("Once café", { addSpecialTokens: true }).slice(prompt.length);
  const one = writer(tok, [prompt]);
  one.out.begin();
  for (const t of more) one.out.onToken(0, t);
  one.out.stopped();
  assert.equal(one.writes.join(""), "Once café\n");
});

test("a decode that changes earlier text as later ids come: the whole text follows what streamed, with a warning", () => {
  // Not a real tokenizer: each new id rewrites the start of the text.
  const reversed: TextTokenizer = { vocabSize: 100, encode: () => [], decode: (ids) => [...ids].reverse().map((i) => `t${i}`).join(" ") };
  const { out, writes, warnings } = writer(reversed, [[1, 10, 11]]);
  out.begin();
  for (const t of [12, 13, 14, 15, 16]) out.onToken(0, t);
  const streamed = writes.join("");
  out.end([{ ids: [12, 13, 14, 15, 16] }]);
  assert.equal(writes.join(""), `${streamed}\nt16 t15 t14 t13 t12 t11 t10\n`);
  assert.match(warnings.join(""), /differs from the whole sequence's decode/);
});

test("a tokenizer that cleans up spaces: the streamed text is the text printed when nothing streams, cleaned up across tokens", () => {
  const dir = tmpDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(MODELS, "stories260K", f), path.join(dir, f));
  const cfg = path.join(dir, "tokenizer_config.json");
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, "utf8")), clean_up_tokenization_spaces: true }));
  const cleaning = loadTokenizer(dir);
  const prompt = cleaning.encode("He said", { addSpecialTokens: true });
  const more = cleaning.encode("He said I do n't know . Is n't it ?", { addSpecialTokens: true }).slice(prompt.length);
  for (const chat of [false, true]) {
    const one = writer(cleaning, [prompt], chat);
    one.out.begin();
    for (const t of [...more, 2]) one.out.onToken(0, t);
    one.out.end([{ ids: [...more, 2] }]);
    assert.ok(one.writes.length > 5, "written as the tokens came");
    // Two prompts print each text whole at the end: the first's text is what one prompt streamed.
    const two = writer(cleaning, [prompt, prompt], chat);
    two.out.end([{ ids: [...more, 2] }, { ids: [2] }]);
    assert.equal(one.writes.join(""), two.writes.join("").split("\n")[1] + "\n");
    assert.equal(one.writes.join(""), chat ? "I don't know. Isn't it?\n" : "He said I don't know. Isn't it?\n");
    assert.deepEqual(one.warnings, []);
  }
});
