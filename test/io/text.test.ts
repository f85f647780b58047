/**
 * Issue 16: text is read the way Python's text mode reads it ("\r\n" and a lone "\r" → "\n") in
 * eval, calibration, fine-tuning data and task files, so a CRLF copy of a file gives the token ids
 * of the LF original.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import zlib from "node:zlib";
import { MlaError } from "../../src/errors.js";
import { checkTextFile, readText, tokenizeForEval } from "../../src/eval/perplexity.js";
import { parseHellaswag, parseInstructionChoices, parseLambada } from "../../src/eval/tasks/items.js";
import { readDocuments } from "../../src/finetune/data.js";
import { decodeText, normalizeNewlines, readTextFile, SNIFF_BYTES } from "../../src/io/text.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { calibrationWindows } from "../../src/ropeSelect/calibrate.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const tok = loadTokenizer(path.join(MODELS, "stories260K"));
const crlf = (s: string) => s.replace(/\n/g, "\r\n");

/** The same text written with LF and with CRLF line endings. */
function pair(name: string, text: string): [string, string] {
  const dir = tmpDir();
  const lf = path.join(dir, `lf-${name}`), cr = path.join(dir, `crlf-${name}`);
  fs.writeFileSync(lf, text);
  fs.writeFileSync(cr, crlf(text));
  return [lf, cr];
}

test("newlines are normalized like Python's universal newlines", () => {
  assert.equal(normalizeNewlines("a\r\nb\rc\nd\r\r\ne\r"), "a\nb\nc\nd\n\ne\n");
  assert.equal(normalizeNewlines("no carriage return\n"), "no carriage return\n");
  const [lf, cr] = pair("x.txt", "one\ntwo\n");
  assert.equal(readTextFile(cr), readTextFile(lf));
});

test("eval and calibration text: a CRLF file gives the token ids of its LF version", () => {
  const text = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_heldout.txt"), "utf8").slice(0, 20_000);
  assert.ok(text.split("\n").length > 20, "the sample has line breaks");
  const [lf, cr] = pair("eval.txt", text);
  const want = tokenizeForEval(tok, readText(lf));
  assert.notDeepEqual(tokenizeForEval(tok, fs.readFileSync(cr, "utf8")), want, "the raw CRLF text tokenizes differently");
  assert.deepEqual(tokenizeForEval(tok, readText(cr)), want);
  assert.deepEqual(calibrationWindows(tok, readText(cr), 4, 64, 1), calibrationWindows(tok, readText(lf), 4, 64, 1));
});

test("fine-tuning data: CRLF .txt and .jsonl files give the documents of their LF versions", () => {
  const text = "Once upon a time.\nThe end.\n\nAnother story.\n";
  const [lf, cr] = pair("data.txt", text);
  assert.deepEqual(readDocuments(cr), readDocuments(lf));
  assert.deepEqual(readDocuments(cr), [text]);
  const [jl, jc] = pair("data.jsonl", '{"text": "a\\nb"}\n{"text": "c"}\n');
  assert.deepEqual(readDocuments(jc), readDocuments(jl));
});

test("task files: CRLF HellaSwag, LAMBADA and instruction files parse like their LF versions", () => {
  const hs = ["A man is sitting.", "1", "He stands.", "He sits down.", "He runs.", "He sleeps."].join("\n") + "\n";
  const [hl, hc] = pair("hellaswag.txt", hs);
  assert.deepEqual(parseHellaswag(hc), parseHellaswag(hl));
  assert.equal(parseHellaswag(hc)[0]!.choices[3], " He sleeps.");
  const [ll, lc] = pair("lambada.jsonl", '{"text": "the cat sat on the mat"}\n{"text": "a dog ran home"}\n');
  assert.deepEqual(parseLambada(lc), parseLambada(ll));
  const item = { instruction: "Please choose the correct answer to the question: Q?\n\nAnswer1: yes Answer2: no\n\nAnswer format: answer1/answer2", answer: "answer1" };
  const [il, ic] = pair("arc.json", JSON.stringify([item], null, 2) + "\n");
  assert.deepEqual(parseInstructionChoices(ic, "answer"), parseInstructionChoices(il, "answer"));
});

test("binary files given as text (a checkpoint, compressed data, NUL bytes, another encoding) are refused, naming the file and what to pass", () => {
  const dir = tmpDir();
  const write = (name: string, data: Uint8Array | string) => (fs.writeFileSync(path.join(dir, name), data), path.join(dir, name));
  const story = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_heldout.txt")).subarray(0, 20_000);
  const cases: [string, RegExp][] = [
    [path.join(MODELS, "stories260K", "model.safetensors"), /looks like a safetensors checkpoint[\s\S]*hint: that is model weights, not text/],
    [write("corpus.txt.gz", zlib.gzipSync(story)), /looks like gzip-compressed data[\s\S]*hint: decompress it first \(gzip -dk .*corpus\.txt\.gz\)/],
    [write("nul.txt", Buffer.concat([Buffer.from("text"), Buffer.alloc(4)])), /holds NUL bytes/],
    [write("latin1.txt", Buffer.from("caf\xe9 cr\xe8me\n", "latin1")), /is not valid UTF-8[\s\S]*iconv/],
  ];
  for (const [file, why] of cases) {
    const named = (e: Error) => e instanceof MlaError && e.code === "BAD_TEXT" && e.message.startsWith(`${file} is not a text file: its start `) && why.test(e.message) && /hint: .*plain UTF-8 text file/.test(e.message);
    for (const read of [readTextFile, readText, checkTextFile, readDocuments]) assert.throws(() => read(file), named, `${read.name} ${file}`);
  }
  // Task files say the file is corrupt rather than suggest another format.
  assert.throws(() => parseLambada(cases[1]![0]), (e: Error) => e instanceof MlaError && /gzip-compressed[\s\S]*hint: decompress it first.*; the task file is corrupt/.test(e.message));
});

test("what UTF-8 text may hold is not taken for binary: a character cut by the sniffed prefix, a BOM, a text that starts like bzip2's magic", () => {
  const dir = tmpDir();
  const cut = Buffer.concat([Buffer.from("a".repeat(SNIFF_BYTES - 1)), Buffer.from("é and more\n")]);
  assert.equal(cut[SNIFF_BYTES - 1], 0xc3, "é straddles the sniffed prefix");
  for (const [name, data] of [["cut.txt", cut], ["bom.txt", Buffer.from("\ufeffhello\n")], ["bzh.txt", Buffer.from("BZh9 starts a bzip2 stream, and this text\n")]] as const) {
    const file = path.join(dir, name);
    fs.writeFileSync(file, data);
    assert.doesNotThrow(() => checkTextFile(file), name);
    assert.equal(readTextFile(file), data.toString("utf8").replace(/^\ufeff/, ""), name); // the BOM itself is dropped
  }
});

test("a leading UTF-8 byte-order mark is dropped: a text scores as without it, a .jsonl's and a task file's first line parse", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mha2mla-bom-"));
  const bom = "\ufeff";
  fs.writeFileSync(path.join(dir, "t.txt"), `${bom}Once upon a time.\r\nThe end.`);
  assert.equal(readText(path.join(dir, "t.txt")), "Once upon a time.\nThe end.");
  fs.writeFileSync(path.join(dir, "d.jsonl"), `${bom}{"text": "one"}\n{"text": "two"}\n`);
  assert.deepEqual(readDocuments(path.join(dir, "d.jsonl")), ["one", "two"]);
  fs.writeFileSync(path.join(dir, "l.jsonl"), `${bom}{"text": "the cat sat on the mat"}\n`);
  assert.equal(parseLambada(path.join(dir, "l.jsonl")).length, 1);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("bytes that are not UTF-8 past a text's start are refused with their offset (they became U+FFFD unseen and were scored); a U+FFFD written as text, and a character across a 64 KB piece, are text", () => {
  const dir = tmpDir();
  const write = (name: string, b: Uint8Array) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, b);
    return f;
  };
  const text = Buffer.alloc(150_000, 0x61);
  text.set([0xe2, 0x82, 0xac], 65_535); // € across the first piece's end
  text.set([0xef, 0xbf, 0xbd], 120_000); // U+FFFD as text
  assert.equal(readTextFile(write("ok.txt", text)).length, 150_000 - 4);
  const bad = Buffer.from(text);
  bad[100_000] = 0xff;
  const f = write("bad.txt", bad);
  assert.throws(() => readTextFile(f), (e: unknown) => e instanceof MlaError && e.code === "BAD_TEXT" && e.message.startsWith(`${f} is not valid UTF-8 past its start: a byte that is not UTF-8 at offset 100000 of 150000\n  hint: convert it`));
  // Decompressed text (an .xz corpus, a .bz2 task file): the offset is in the decompressed bytes, and the
  // hint decompresses before converting (iconv on the archive itself would mangle it).
  assert.throws(() => decodeText(bad, "corpus.txt.xz", undefined, "xz"), (e: unknown) => e instanceof MlaError && e.code === "BAD_TEXT" && e.message.startsWith("corpus.txt.xz holds text that is not valid UTF-8: a byte that is not UTF-8 at offset 100000 of its 150000 decompressed bytes\n  hint: decompress it (xz -dk corpus.txt.xz), convert the text (iconv -f ENCODING -t utf-8 corpus.txt > corpus.clean.txt"));
  // A .jsonl corpus stays .jsonl (read as plain text otherwise); a caller's own advice wins (a task file: copy it again).
  assert.throws(() => decodeText(bad, "d/c.jsonl.xz", undefined, "xz"), /> d\/c\.clean\.jsonl, .*and pass d\/c\.clean\.jsonl$/);
  assert.throws(() => decodeText(bad, "hs.txt.bz2", "copy it again", "bzip2"), /decompressed bytes\n {2}hint: copy it again$/);
  // Bad bytes at the very start of the decompressed text: the same decompress-first advice, not iconv on the archive.
  const badStart = Buffer.from(text);
  badStart[10] = 0xff;
  assert.throws(() => decodeText(badStart, "corpus.txt.xz", undefined, "xz"), /corpus\.txt\.xz does not hold text once decompressed: its start is not valid UTF-8\n {2}hint: decompress it \(xz -dk corpus\.txt\.xz\)/);
  const cut = write("cut.txt", Buffer.concat([text.subarray(0, 1000), Buffer.from([0xe2, 0x82])]));
  assert.throws(() => readTextFile(cut), /at offset 1000 of 1002/);
  // A character cut short, then ASCII: the offset of its first byte, as Python reports it, also where it
  // ends a 64 KB piece.
  for (const at of [50_000, 65_534]) {
    const b = Buffer.alloc(150_000, 0x61);
    b.set([0xe2, 0x82], at);
    assert.throws(() => readTextFile(write(`cut-${at}.txt`, b)), new RegExp(`at offset ${at} of 150000`));
  }
});
