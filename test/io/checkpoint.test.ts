import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { Checkpoint, CheckpointWriter, INDEX_FILE, planShards } from "../../src/io/checkpoint.js";
import { beginOutDir, commitOutDir } from "../../src/io/atomicDir.js";
import { tmpDir } from "../helpers.js";

const specs = [
  { name: "a", dtype: "F32" as const, shape: [4] },
  { name: "b", dtype: "F32" as const, shape: [8] },
  { name: "c", dtype: "BF16" as const, shape: [10] },
];

async function writeSharded(dir: string, maxShardBytes: number): Promise<void> {
  const w = new CheckpointWriter(dir, specs, { maxShardBytes, metadata: { format: "pt" } });
  for (const s of specs) {
    const n = s.shape[0]! * (s.dtype === "F32" ? 4 : 2);
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i + s.name.charCodeAt(0)) & 0xff);
    await w.append(bytes.subarray(0, 2));
    await w.append(bytes.subarray(2));
  }
  await w.close();
}

test("sharded write + index read back every tensor; a single shard has no index", async () => {
  const dir = tmpDir();
  await writeSharded(dir, 50);
  assert.ok(fs.existsSync(path.join(dir, INDEX_FILE)));
  assert.deepEqual(fs.readdirSync(dir).sort(), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", INDEX_FILE]);
  const ck = Checkpoint.open(dir);
  assert.deepEqual(ck.names().sort(), ["a", "b", "c"]);
  assert.equal(ck.readBytes("c")[0], "c".charCodeAt(0));
  assert.equal(ck.dataBytes(), 16 + 32 + 20);
  ck.close();
  const one = tmpDir();
  await writeSharded(one, 1 << 20);
  assert.deepEqual(fs.readdirSync(one), ["model.safetensors"]);
});

test("planShards keeps order and puts an oversized tensor alone", () => {
  const p = planShards(specs, 20);
  assert.deepEqual(p.map((s) => s.specs.map((t) => t.name)), [["a"], ["b"], ["c"]]);
});

test("an index pointing at a missing shard or tensor is refused, naming both", async () => {
  const dir = tmpDir();
  await writeSharded(dir, 50);
  const idx = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), "utf8"));
  idx.weight_map["ghost"] = "model-00001-of-00002.safetensors";
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify(idx));
  assert.throws(() => Checkpoint.open(dir), (e: Error) => e instanceof MlaError && /"ghost" is mapped to model-00001-of-00002\.safetensors, which does not contain it/.test(e.message));
  delete idx.weight_map["ghost"];
  fs.rmSync(path.join(dir, "model-00002-of-00002.safetensors"));
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify(idx));
  assert.throws(() => Checkpoint.open(dir), (e: Error) => e instanceof MlaError && /points at shard model-00002-of-00002\.safetensors, which does not exist/.test(e.message));
  fs.writeFileSync(path.join(dir, INDEX_FILE), "{");
  assert.throws(() => Checkpoint.open(dir), (e: Error) => e instanceof MlaError && /not valid JSON/.test(e.message));
});

test("a folder without weights is a clear error", () => {
  assert.throws(() => Checkpoint.open(tmpDir()), (e: Error) => e instanceof MlaError && /no model\.safetensors/.test(e.message));
});

test("output folders appear whole: existing refused without force, replaced with force", () => {
  const parent = tmpDir();
  const out = path.join(parent, "out");
  const t1 = beginOutDir(out, false);
  fs.writeFileSync(path.join(t1, "mla_conversion.json"), "1"); // a conversion's mark: an earlier output
  assert.equal(fs.existsSync(out), false, "nothing at OUT before commit");
  commitOutDir(t1, out, false);
  assert.throws(() => beginOutDir(out, false), (e: Error) => e instanceof MlaError && e.code === "EXISTS");
  const t2 = beginOutDir(out, true);
  fs.writeFileSync(path.join(t2, "y"), "2");
  commitOutDir(t2, out, true);
  assert.deepEqual(fs.readdirSync(out), ["y"]);
  assert.deepEqual(fs.readdirSync(parent), ["out"], "no temporary folders left");
});
