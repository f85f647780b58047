/**
 * The README's "Library" example, taken from README.md as written, type-checks against the installed
 * package and runs: its outputs go to a temporary folder, its corpus is a fixture, and its fine-tune
 * budget is one step. Every adaptation must find its text, so an edited example cannot slip past.
 */
import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { FIXTURES, ROOT, tmpDir } from "../helpers.js";
import { installPackage, tsc } from "./installed.js";

function libraryExample(): string {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const m = /^## Library\n+```ts\n([\s\S]*?)^```$/m.exec(readme);
  assert.ok(m, 'README.md has no "## Library" section opening with a ```ts block');
  return m[1]!;
}

function adapt(code: string, out: string): string {
  const edits: [RegExp, string][] = [
    [/"out\//g, JSON.stringify(out + "/").slice(0, -1)],
    [/"corpus\.txt"/g, JSON.stringify(path.join(FIXTURES, "text", "tinystories_heldout.txt"))],
    // One step of the default batch 16 × seq 256 (the README's budget takes minutes on the TypeScript backend).
    [/tokens: 200_000/g, "tokens: 4096"],
  ];
  for (const [re, to] of edits) {
    assert.match(code, re, `the README example no longer contains ${re}: update this test's adaptation`);
    code = code.replace(re, to);
  }
  // What the example computes, for the checks below.
  return code + `console.log(JSON.stringify({ ppl, logits: logits.shape, next: next.shape, text, served: choices[0]!.text }));\n`;
}

test("the README's Library example type-checks and runs against the installed package", async () => {
  const app = installPackage();
  const out = tmpDir("mha2mla-readme-");
  fs.writeFileSync(path.join(app, "readme.ts"), adapt(libraryExample(), out));
  const built = await tsc(app, "readme", ["readme.ts"], { module: "nodenext", moduleResolution: "nodenext", noEmit: false });
  assert.equal(built.code, 0, built.output);
  // Run from the checkout, as the README's relative fixture paths assume; "mha2mla" resolves from the script's folder.
  const r = spawnSync(process.execPath, [path.join(app, "readme.js")], { cwd: ROOT, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "", "the library wrote to stderr without a logger or progress sink");
  const [kv, result] = r.stdout.trim().split("\n");
  assert.equal(kv, "120", "the example's comment says 120 cached values per token");
  const { ppl, logits, next, text, served } = JSON.parse(result!) as { ppl: number; logits: number[]; next: number[]; text: string; served: string };
  assert.ok(Number.isFinite(ppl) && ppl > 1, `ppl ${ppl}`);
  assert.ok(typeof served === "string" && served.length > 0, "the served model continued the prompt");
  assert.ok(typeof text === "string" && text.length > 0, "generate continued the prompt");
  assert.deepEqual(next, [2, logits[1]]);
  assert.ok(fs.existsSync(path.join(out, "mla-ft", "model.safetensors")));
  const ds = JSON.parse(fs.readFileSync(path.join(out, "ds", "config.json"), "utf8")) as { model_type: string };
  assert.equal(ds.model_type, "deepseek_v3");
  const exported = JSON.parse(fs.readFileSync(path.join(out, "mla-ft-ds", "config.json"), "utf8")) as { model_type: string };
  assert.equal(exported.model_type, "deepseek_v3", "the fine-tuned model was exported");
});
