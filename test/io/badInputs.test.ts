/**
 * Damaged inputs and odd output paths give one-line MlaErrors naming the culprit (a review's findings,
 * thirty-second session): a folder under /proc or a file (was an endless loop, or an internal ENOENT);
 * --json onto a device (was replaced by a plain file); a tokenizer_config.json of null and an unknown
 * tokenizer model type; bos/eos ids outside the vocabulary; NaN weights under eval; a side file that is
 * a folder.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { perplexity } from "../../src/eval/perplexity.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { writeFileAtomic } from "../../src/io/atomicDir.js";
import { Checkpoint, copyModelSideFiles } from "../../src/io/checkpoint.js";
import { normalizeHfConfig } from "../../src/io/hfConfig.js";
import { makeDirs } from "../../src/io/makeDirs.js";
import { rewriteTensors } from "../../src/io/rewriteTensors.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { loadModel } from "../../src/model/llama.js";
import { MODELS, tmpDir } from "../helpers.js";

const STORIES = path.join(MODELS, "stories260K");

function copyOfStories(): string {
  const dir = path.join(tmpDir(), "m");
  fs.cpSync(STORIES, dir, { recursive: true });
  return dir;
}

const refused = (code: string, message: RegExp) => (e: unknown) => {
  assert.ok(e instanceof MlaError, String(e));
  assert.equal(e.code, code, e.message);
  assert.match(e.message, message);
  assert.ok(!e.message.includes("\n") || /\n\s*hint: /.test(e.message), "one line and its hint");
  return true;
};

test("makeDirs: a file where a parent folder should be, and a path under /proc, are refused by name (no endless loop)", () => {
  const root = tmpDir();
  fs.writeFileSync(path.join(root, "f"), "x");
  assert.throws(() => makeDirs(path.join(root, "f", "a", "b"), "the --json file's folder"), refused("BAD_ARGUMENT", /f is not a folder/));
  makeDirs(path.join(root, "a", "b", "c"), "a folder");
  assert.ok(fs.statSync(path.join(root, "a", "b", "c")).isDirectory());
  makeDirs(path.join(root, "a", "b", "c"), "a folder"); // there already: nothing to do
  if (fs.existsSync("/proc/self")) assert.throws(() => makeDirs("/proc/no-such-folder/x", "the report's folder"), (e: unknown) => e instanceof MlaError && /cannot create the report's folder \/proc\/no-such-folder\/x: \/proc is not on a disk/.test(e.message));
});

test("writeFileAtomic writes a device in place (a link to /dev/null stays a link: a rename would have replaced it)", () => {
  if (!fs.existsSync("/dev/null")) return;
  const link = path.join(tmpDir(), "null");
  fs.symlinkSync("/dev/null", link);
  writeFileAtomic(link, "{}\n");
  assert.ok(fs.lstatSync(link).isSymbolicLink());
  assert.deepEqual(fs.readdirSync(path.dirname(link)), ["null"], "no temporary file left");
});

test("a link to a file is written through: the file it leads to is replaced, the link stays (a rename replaced the link, /dev/stdout as root)", () => {
  const dir = tmpDir();
  const real = path.join(dir, "real.json");
  const link = path.join(dir, "link.json");
  fs.writeFileSync(real, "old\n");
  fs.symlinkSync("real.json", link);
  writeFileAtomic(link, "{}\n");
  assert.ok(fs.lstatSync(link).isSymbolicLink(), "still a link");
  assert.equal(fs.readFileSync(real, "utf8"), "{}\n", "its file holds the new text");
  assert.deepEqual(fs.readdirSync(dir).sort(), ["link.json", "real.json"], "no temporary file left");
});

test("a config.json or model.safetensors that is a folder is named as one, not as EISDIR (inspect)", () => {
  for (const [file, code, message] of [
    ["config.json", "IO", /config\.json: it is a folder, not a file/],
    ["model.safetensors", "BAD_SAFETENSORS", /model\.safetensors: is a folder, not a file/],
  ] as const) {
    const dir = copyOfStories();
    fs.rmSync(path.join(dir, file));
    fs.mkdirSync(path.join(dir, file));
    assert.throws(
      () => inspectModel(dir),
      (e: unknown) => refused(code, message)(e) && !/EISDIR|illegal operation/.test((e as Error).message),
    );
  }
});

test("a tokenizer_config.json of null, and a tokenizer model type the library does not read, are refused naming the file", () => {
  const a = copyOfStories();
  fs.writeFileSync(path.join(a, "tokenizer_config.json"), "null");
  assert.throws(() => loadTokenizer(a), refused("BAD_TOKENIZER", /tokenizer_config\.json: holds null, not a JSON object/));
  const b = copyOfStories();
  const tj = JSON.parse(fs.readFileSync(path.join(b, "tokenizer.json"), "utf8"));
  tj.model.type = "Bogus";
  fs.writeFileSync(path.join(b, "tokenizer.json"), JSON.stringify(tj));
  assert.throws(() => loadTokenizer(b), refused("BAD_TOKENIZER", /model type "Bogus" is not one this tool reads/));
});

test("bos_token_id must be a token id of the vocabulary, eos_token_id a whole number", () => {
  const raw = JSON.parse(fs.readFileSync(path.join(STORIES, "config.json"), "utf8"));
  assert.equal(normalizeHfConfig(raw).bosTokenId, raw.bos_token_id);
  for (const v of [1.5, -1, raw.vocab_size]) assert.throws(() => normalizeHfConfig({ ...raw, bos_token_id: v }), refused("BAD_CONFIG", new RegExp(`"bos_token_id" is ${v}, not a token id of the ${raw.vocab_size}-token vocabulary`)));
  for (const v of [2.5, [-3]]) assert.throws(() => normalizeHfConfig({ ...raw, eos_token_id: v }), refused("BAD_CONFIG", /"eos_token_id" is -?[\d.]+, not a token id\n/));
  assert.equal(normalizeHfConfig({ ...raw, eos_token_id: [99999] }).eosTokenId, 99999, "an EOS past the embedding is only never sampled");
  assert.equal(normalizeHfConfig({ ...raw, bos_token_id: null }).bosTokenId, null, "null: none");
});

test("eval of a model whose weights hold NaN is refused, not scored as NaN", async () => {
  const dir = copyOfStories();
  const ck = Checkpoint.open(dir);
  const name = ck.names().find((n) => n.endsWith("norm.weight") && !n.includes("layers"))!;
  const w = ck.readF32(name);
  ck.close();
  w[0] = NaN;
  rewriteTensors(dir, new Map([[name, w]]));
  const lm = loadModel(dir);
  const ids = Int32Array.from(lm.tokenizer.encode("Once upon a time there was a cat.", { addSpecialTokens: false }));
  await assert.rejects(perplexity(lm.model, ids, { ctx: 8, progress: null }), refused("BAD_CHECKPOINT", /loss is NaN on the window at token 0: its weights give non-finite logits/));
});

test("a side file that is a folder is refused by name when a model folder is written", () => {
  const dir = copyOfStories();
  fs.rmSync(path.join(dir, "tokenizer_config.json"));
  fs.mkdirSync(path.join(dir, "tokenizer_config.json"));
  assert.throws(() => copyModelSideFiles(dir, tmpDir()), refused("BAD_CHECKPOINT", /tokenizer_config\.json is not a file/));
});

test("a tokenizer.json or config.json that is a link to itself is named as unreadable, not as absent", () => {
  const dir = copyOfStories();
  fs.rmSync(path.join(dir, "tokenizer.json"));
  fs.symlinkSync("tokenizer.json", path.join(dir, "tokenizer.json"));
  assert.throws(() => loadTokenizer(dir), refused("BAD_TOKENIZER", /tokenizer\.json: cannot be read \(ELOOP/));
  const m = copyOfStories();
  fs.rmSync(path.join(m, "config.json"));
  fs.symlinkSync("config.json", path.join(m, "config.json"));
  assert.throws(() => loadModel(m), refused("BAD_CHECKPOINT", /config\.json is a link that leads to no file/));
});

test("an index entry naming a folder (or \"\") as a tensor's shard is refused naming the entry", () => {
  const dir = copyOfStories();
  const ck = Checkpoint.open(dir);
  const names = ck.names();
  ck.close();
  fs.renameSync(path.join(dir, "model.safetensors"), path.join(dir, "model-00001-of-00001.safetensors"));
  fs.mkdirSync(path.join(dir, "sub"));
  for (const bad of ["sub", ""]) {
    const map = Object.fromEntries(names.map((n, i) => [n, i === 0 ? bad : "model-00001-of-00001.safetensors"]));
    fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: map }));
    assert.throws(() => Checkpoint.open(dir), refused("BAD_CHECKPOINT", new RegExp(`tensor "${names[0]!.replace(/\./g, "\\.")}" points at ${JSON.stringify(bad)}, which is not a file`)));
  }
});
