/**
 * finetune's folders are checked before any work: the --token-cache folder must be a folder of its
 * own (not the model, a data file, the run folder or the working folder, nor inside or holding one),
 * and a refused run writes nothing.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

/** A copy of the model and the data in a fresh folder: a check that failed to refuse would write into them. */
function workspace() {
  const root = tmpDir();
  const model = path.join(root, "model");
  fs.cpSync(path.join(MODELS, "stories260K"), model, { recursive: true });
  const data = path.join(root, "texts", "tiny.txt");
  fs.mkdirSync(path.dirname(data));
  fs.copyFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), data);
  return { root, model, data, out: path.join(root, "runs", "ft") };
}

const cacheFiles = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith(".i32")) : []);

test("--token-cache that is, lies inside or holds the model, a data file, the --out run folder or the working folder is refused before any work, naming both paths", async () => {
  const w = workspace();
  const logged: string[] = [];
  const base: FinetuneOptions = { data: [w.data], out: w.out, tokens: 2 * 4 * 32, seq: 32, batch: 4, progress: null, logger: { info: (m) => logged.push(m), warn: (m) => logged.push(m) } };
  const refused = async (tokenCache: string, re: RegExp, o: Partial<FinetuneOptions> = {}) => {
    await assert.rejects(finetune(w.model, { ...base, tokenCache, ...o }), (e: Error) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message) && /hint: .*a folder of its own.*e\.g\. --token-cache/.test(e.message), tokenCache);
    assert.deepEqual(logged, [], `refused before any work (${tokenCache})`);
  };
  await refused(w.model, /--token-cache .*model is the input model folder \(/);
  await refused(path.join(w.model, "tokens"), /is the input model folder or inside it/);
  await refused(w.root, /holds the input model folder/);
  await refused(path.dirname(w.data), /holds --data \(.*tiny\.txt\)/);
  await refused(w.data, /--token-cache .*tiny\.txt is --data/);
  // --out need not exist yet: a fresh run would otherwise find its own --out non-empty (the cache in it).
  await refused(w.out, /is the --out run folder \(/);
  await refused(path.join(w.out, "tokens"), /is the --out run folder or inside it/, { force: true });
  await refused(path.dirname(w.out), /holds the --out run folder/);
  const file = path.join(w.root, "a-file");
  fs.writeFileSync(file, "");
  await refused(file, /--token-cache .*a-file is a file, not a folder/);
  const cwd = process.cwd();
  try {
    process.chdir(path.dirname(w.data));
    await refused(".", /--token-cache \. is the working folder or holds it/);
    await refused("..", /is the working folder or holds it/);
  } finally {
    process.chdir(cwd);
  }
  assert.deepEqual(cacheFiles(w.root), [], "no token stream written anywhere");
  assert.ok(!fs.existsSync(w.out), "no run folder created");
  assert.deepEqual(fs.readdirSync(w.model).sort(), fs.readdirSync(path.join(MODELS, "stories260K")).sort(), "the model folder is untouched");
});

test("a token cache beside the run is used and reused; an existing --out is refused before the data is tokenized", async () => {
  const w = workspace();
  const tokenCache = path.join(w.root, "token-cache");
  const logged: string[] = [];
  const o: FinetuneOptions = { data: [w.data], out: w.out, tokenCache, tokens: 2 * 4 * 32, seq: 32, batch: 4, progress: null, logger: { info: (m) => logged.push(m), warn: () => {} } };
  await finetune(w.model, o);
  assert.equal(cacheFiles(tokenCache).length, 1);
  logged.length = 0;
  await finetune(w.model, { ...o, force: true });
  assert.ok(logged.some((m) => /from the token cache/.test(m)), logged.join("\n"));
  logged.length = 0;
  await assert.rejects(finetune(w.model, o), (e: Error) => e instanceof MlaError && e.code === "EXISTS" && /--resume .* --force/.test(e.message));
  assert.deepEqual(logged, [], "refused before the model or the data were read");
});

test("an --out that is a file, and --precision bf16 on a backend without bf16 GEMMs, are refused before the data is tokenized or --out made", async () => {
  const w = workspace();
  const file = path.join(w.root, "afile");
  fs.writeFileSync(file, "hi");
  const logged: string[] = [];
  const o: FinetuneOptions = { data: [w.data], out: file, tokens: 2 * 4 * 32, seq: 32, batch: 4, progress: null, device: "cpu", logger: { info: (m) => logged.push(m), warn: () => {} } };
  for (const resume of [false, true]) await assert.rejects(finetune(w.model, { ...o, resume }), (e: Error) => e instanceof MlaError && /--out .*afile is a file, not a folder/.test(e.message));
  await assert.rejects(finetune(w.model, { ...o, out: w.out, precision: "bf16" }), (e: Error) => e instanceof MlaError && /--precision bf16 needs a backend with bf16 GEMMs/.test(e.message));
  assert.equal(fs.existsSync(w.out), false, "no --out made");
  assert.ok(!logged.some((m) => /tokeniz/.test(m)), logged.join("\n"));
});

test("--resume with --force, and a --data folder, are refused by name before any work", async () => {
  const w = workspace();
  const o: FinetuneOptions = { data: [w.data], out: w.out, tokens: 2 * 4 * 32, seq: 32, batch: 4, progress: null, device: "cpu" };
  await assert.rejects(finetune(w.model, { ...o, resume: true, force: true }), (e: Error) => e instanceof MlaError && /--resume and --force contradict each other/.test(e.message));
  await assert.rejects(finetune(w.model, { ...o, data: [path.dirname(w.data)] }), (e: Error) => e instanceof MlaError && /--data .*texts is a folder, not a text file\n  hint: pass the files themselves/.test(e.message));
  assert.equal(fs.existsSync(w.out), false);
});

test("--force never replaces a pretrained model's folder at --out (it is no earlier run nor a model this tool wrote): refused before any work, its files kept", async () => {
  const out = path.join(tmpDir(), "original");
  fs.cpSync(path.join(MODELS, "stories260K"), out, { recursive: true });
  const before = fs.readdirSync(out).sort();
  await assert.rejects(finetune(path.join(MODELS, "stories260K"), { data: [path.join(FIXTURES, "text", "tinystories.txt")], out, force: true, tokens: 64, device: "cpu", progress: null }), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /holds no fine-tuning run \(no train_log\.jsonl, finetune\.json, checkpoint or model this tool wrote\)/.test(e.message));
  assert.deepEqual(fs.readdirSync(out).sort(), before);
});
