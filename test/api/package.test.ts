/**
 * `import … from "mha2mla"` from a script outside the repository, as after `npm install mha2mla`:
 * the packed files resolve and run (ESM, and require() where Node loads ES modules that way), the
 * bundled model is found from the installed copy, and the declarations type-check a consumer under
 * each module resolution a TypeScript project uses.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import * as api from "../../src/index.js";
import { installPackage, runNode, tsc } from "./installed.js";

const app = installPackage();

/** What a script reaches for beyond the four functions the design names: one function per command (generate --chat's template too), and what their options take. */
const SCRIPT_NEEDS = ["convert", "convertDeepseek", "exportDeepseek", "evaluate", "finetune", "loadModel", "inspectModel", "generate", "study", "synth", "pipeline", "writeReport", "generateBatchAsync", "DecodeSession", "serve", "loadChatTemplate", "stopTokenIds", "IncrementalDecoder", "FINETUNE_DEFAULTS", "selectBackend", "DEVICE_NAMES", "KV_CACHE_DTYPES", "MlaError", "isMlaError"];

test("the installed package imports by name and exports what the repository's index does", () => {
  fs.writeFileSync(
    path.join(app, "esm.mjs"),
    `import * as m from "mha2mla";
const info = m.inspectModel("stories260K");
console.log(JSON.stringify({ names: Object.keys(m).sort(), dir: info.dir, kv: info.kv_elems_per_token }));
`,
  );
  const r = runNode(app, "esm.mjs");
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { names: string[]; dir: string; kv: number };
  assert.deepEqual(out.names, Object.keys(api).sort());
  for (const n of SCRIPT_NEEDS) assert.ok(out.names.includes(n), `${n} is not exported`);
  // The bundled model resolves inside the installed copy, not the checkout.
  assert.equal(fs.realpathSync(out.dir), fs.realpathSync(path.join(app, "node_modules", "mha2mla", "fixtures", "models", "stories260K")));
  assert.equal(out.kv, 320);
  assert.equal(r.stderr, "");
});

test("require() of the installed package works where Node loads ES modules with require", { skip: (process.features as { require_module?: boolean }).require_module ? false : "this Node cannot require() an ES module" }, () => {
  fs.writeFileSync(path.join(app, "cjs.cjs"), `const m = require("mha2mla"); console.log(typeof m.convert, typeof m.MlaError);\n`);
  const r = runNode(app, "cjs.cjs");
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "function function");
});

test("the declarations type-check a strict consumer under node16, nodenext and bundler resolution", async () => {
  fs.writeFileSync(
    path.join(app, "consumer.ts"),
    `import { convert, evaluate, finetune, loadModel, study, synth, generate, exportDeepseek, loadChatTemplate, stopTokenIds, generateBatchAsync, selectBackend, DecodeSession, MlaError, FINETUNE_DEFAULTS, DEVICE_NAMES, KV_CACHE_DTYPES } from "mha2mla";
import { convertDeepseek, writeReport } from "mha2mla";
import type { WrittenConversion, DryRunConversion, DeepseekResult, ReportOptions, FinetuneStep, FinetuneValidation } from "mha2mla";
import type { ConvertOptions, ConvertResult, EvalOptions, EvalResult, FinetuneOptions, FinetuneResult, StudyOptions, StudyResult, SynthOptions, SynthResult, ExportResult, ChatTemplate, GenerateAsyncOptions, GenerateBatchResult, DeviceName, KvCacheDtype, ProgressSink, Logger, LoadModelOptions, DecodeSessionOptions } from "mha2mla";
const device: DeviceName = DEVICE_NAMES[0];
const kv: KvCacheDtype = KV_CACHE_DTYPES[1];
const sink: ProgressSink = process.stderr;
const logger: Logger = console;
const signal = new AbortController().signal;
const c: ConvertOptions = { rank: 4, out: "x", device, logger, progress: sink, signal };
const e: EvalOptions = { text: "t", kvCache: kv, signal };
const f: FinetuneOptions = { data: ["d"], out: "o", seq: FINETUNE_DEFAULTS.seq, signal };
const s: StudyOptions = { like: "m", variants: ["mha", "mla"], data: "d", tokens: 1, out: "o" };
const load: LoadModelOptions = { backend: selectBackend("reference") };
const g: GenerateAsyncOptions = { maxTokens: 4, signal, onStep: (n: number) => void n };
const session: DecodeSessionOptions = { graphs: false };
// The CLI's lowercase dtype, as synth takes it.
const y: SynthOptions = { arch: "llama2-7b", out: "o", dtype: "bf16", layers: 1, signal };
// A conversion without dryRun has its folder (out: string, no "!"); a dry run none; a dryRun known only at run time, either.
export async function conversions(dryRun: boolean): Promise<string> {
  const written: string = (await convert("m", { rank: 4, out: "x" })).out;
  const w: WrittenConversion = await convert("m", { rank: 4, dryRun: false });
  const none: null = (await convert("m", { rank: 4, dryRun: true })).out;
  const d: DryRunConversion = await convert("m", { rank: 4, dryRun: true });
  const either = await convert("m", { rank: 4, dryRun });
  // @ts-expect-error: a dryRun known at run time may have written nothing
  const unchecked: string = either.out;
  const checked: string = either.out !== null ? either.out : "dry run";
  const ds: string = (await convertDeepseek("m", { rank: 4 })).out;
  const dsDry: null = (await convertDeepseek("m", { rank: 4, dryRun: true })).out;
  const dsEither: DeepseekResult = await convertDeepseek("m", { rank: 4, dryRun });
  const report: ReportOptions = {};
  writeReport(["a.json"], "r.html", report);
  void [w, none, d, unchecked, dsDry, dsEither];
  return written + checked + ds;
}
// Progress as objects: onStep after each step, onValidation after each validation.
export const progressOptions: FinetuneOptions = {
  data: ["d"],
  out: "o",
  onStep: (s: FinetuneStep) => console.log(s.step, s.steps, s.tokens, s.loss, s.lr, s.gradNorm, s.tokensPerSecond, s.elapsedSeconds),
  onValidation: async (v: FinetuneValidation) => console.log(v.when, v.step, v.valNll),
};
export async function run(): Promise<[ConvertResult, EvalResult, FinetuneResult, StudyResult, GenerateBatchResult, SynthResult, ExportResult]> {
  const { model, tokenizer, dir, config } = loadModel("m", load);
  void new DecodeSession(model, [model.newCache(kv)], session);
  // generate --chat, from a script: the template renders the messages; the ids end at a stop token.
  const template: ChatTemplate | null = loadChatTemplate(dir);
  const prompt = tokenizer.encode(template ? template.render([{ role: "user", content: "hi" }]) : "hi", { addSpecialTokens: !template });
  const text: string = tokenizer.decode(generate(model, prompt, { maxTokens: 4 }).ids.filter((id) => !stopTokenIds(config).has(id)));
  void text;
  try {
    return [await convert("m", c), await evaluate("m", e), await finetune("m", f), await study(s), await generateBatchAsync(model, [[1, 2]], g), await synth(y), await exportDeepseek("m", { out: "d", signal })];
  } catch (err) {
    if (err instanceof MlaError) throw new Error(err.code);
    throw err;
  }
}
`,
  );
  const resolutions = [
    ["node16", { module: "node16", moduleResolution: "node16" }],
    ["nodenext", { module: "nodenext", moduleResolution: "nodenext" }],
    ["bundler", { module: "esnext", moduleResolution: "bundler" }],
  ] as const;
  const results = await Promise.all(resolutions.map(([name, options]) => tsc(app, name, ["consumer.ts"], options)));
  results.forEach((r, i) => assert.equal(r.code, 0, `${resolutions[i]![0]}:\n${r.output}`));
});
