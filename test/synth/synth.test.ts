/**
 * `synth` from a script: what it refuses (a name that is an Object member, a file at --out even with
 * --force, a seed its 32-bit generators would alias), its AbortSignal (nothing left behind), and what
 * it reports (the output resolved, progress in bytes that a small checkpoint does not round to 0.0).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError, synth } from "../../src/index.js";
import { tmpDir } from "../helpers.js";

const refused = (re: RegExp) => (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message);

test("synth refuses an --arch that is an Object member, a file at --out (with --force too, leaving it as it was) and a seed past 32 bits", async () => {
  const dir = tmpDir();
  // "constructor" found Object itself in the table (a DataCloneError), "__proto__" an empty config.
  for (const arch of ["constructor", "__proto__", "toString"]) await assert.rejects(synth({ arch, out: path.join(dir, arch), progress: null }), refused(new RegExp(`--arch ${arch} is not a known architecture[\\s\\S]*hint: known: llama2-7b`)));
  const file = path.join(dir, "notes.txt");
  fs.writeFileSync(file, "mine");
  for (const force of [false, true]) await assert.rejects(synth({ arch: "stories260k", out: file, force, progress: null }), refused(/--out .*notes\.txt is a file, not a folder/));
  assert.equal(fs.readFileSync(file, "utf8"), "mine");
  await assert.rejects(synth({ arch: "stories260k", out: path.join(dir, "s"), seed: 2 ** 32, progress: null }), refused(/--seed 4294967296 is not a whole number in \[0, 2\^32\)/));
  await assert.rejects(synth({ arch: "stories260k", out: path.join(dir, "s"), maxShardBytes: -1, progress: null }), refused(/--shard-size .* GiB \(maxShardBytes -1\) is not a size/));
  assert.deepEqual(fs.readdirSync(dir), ["notes.txt"]);
});

test("synth stops on its AbortSignal with INTERRUPTED and leaves neither the output nor a temporary folder", async () => {
  const dir = tmpDir();
  const out = path.join(dir, "big");
  const c = new AbortController();
  // Aborted at its first progress line (the first chunk), long before smollm-135m's 270 MB are written.
  const progress = { write: () => c.abort(new Error("enough")) };
  await assert.rejects(synth({ arch: "smollm-135m", out, progress, signal: c.signal }), (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED" && /enough/.test(e.message));
  assert.deepEqual(fs.readdirSync(dir), [], "no output, no .big.tmp-* folder");
  const already = AbortSignal.abort(new Error("before"));
  await assert.rejects(synth({ arch: "stories260k", out, signal: already, progress: null }), (e: unknown) => e instanceof MlaError && e.code === "INTERRUPTED");
  assert.deepEqual(fs.readdirSync(dir), []);
});

test("synth returns its output resolved and reports progress in bytes", async () => {
  const dir = tmpDir();
  const lines: string[] = [];
  const cwd = process.cwd();
  process.chdir(dir);
  try {
    const r = await synth({ arch: "Stories260K", out: "s", dtype: "f32", progress: { write: (s) => lines.push(s) } });
    assert.equal(r.out, path.join(fs.realpathSync(dir), "s"));
    // The tensors' bytes: the file less its 8-byte length and JSON header.
    const file = fs.readFileSync(path.join(dir, "s", "model.safetensors"));
    assert.equal(r.bytes, file.length - 8 - Number(file.readBigUInt64LE(0)));
  } finally {
    process.chdir(cwd);
  }
  assert.match(lines.at(-1)!, /^synth 1\.0\dM\/1\.0\dM bytes \(100\.0%\)/, lines.join(""));
});

test("synth with a billion layers is refused for disk room at once, before listing every layer's tensors (that filled the heap)", async () => {
  const out = path.join(tmpDir(), "huge");
  const t0 = performance.now();
  await assert.rejects(synth({ arch: "stories260k", out, layers: 1e9 }), (e: unknown) => e instanceof MlaError && /the synth checkpoint \(stories260k\) takes about [\d.]+ [GTP]B and the disk of .* has [\d.]+ [GTP]B free/.test(e.message));
  assert.ok(performance.now() - t0 < 5000, "refused at once");
  assert.equal(fs.existsSync(out), false);
});
