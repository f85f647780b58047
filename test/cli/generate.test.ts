/**
 * `generate`'s stdout: one prompt's text streams as it is generated (Ctrl-C keeps it) and ends byte
 * for byte as the text printed whole at the end before streaming (decode of prompt + continuation, BOS
 * and the stop token left out; a chat's reply alone); several prompts are printed whole at the end.
 * The sampling flags are refused with greedy decoding, which reads none of them.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadModel, type LoadedModel } from "../../src/model/llama.js";
import { generateBatch } from "../../src/model/generate.js";
import { stopTokenIds } from "../../src/model/config.js";
import { loadChatTemplate } from "../../src/serve/chatTemplate.js";
import { MODELS, ROOT, tmpDir, watchChild } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, "generate", "stories260K", ...args, "--device", "reference"], { encoding: "utf8" });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** What generate printed before it streamed, computed from the library on the same backend. */
function printedWhole(lm: LoadedModel, prompts: string[], o: { maxTokens: number; temperature?: number; seed?: number; chat?: { system?: string } }): string {
  const template = o.chat ? loadChatTemplate(lm.dir)! : null;
  const ids = prompts.map((p) => (template ? lm.tokenizer.encode(template.render([...(o.chat?.system !== undefined ? [{ role: "system", content: o.chat.system }] : []), { role: "user", content: p }]), { addSpecialTokens: false }) : lm.tokenizer.encode(p, { addSpecialTokens: true })));
  const r = generateBatch(lm.model, ids, { maxTokens: o.maxTokens, temperature: o.temperature ?? 0, seed: o.seed ?? 0 });
  const stops = stopTokenIds(lm.config);
  return r.sequences
    .map((s, i) => {
      const out = s.ids.length > 0 && stops.has(s.ids[s.ids.length - 1]!) ? s.ids.slice(0, -1) : s.ids;
      const text = template ? lm.tokenizer.decode(out, { skipSpecialTokens: true }) : lm.tokenizer.decode([...ids[i]!, ...out].filter((t) => t !== lm.config.bosTokenId));
      return `${prompts.length > 1 ? `--- ${i + 1}\n` : ""}${text}\n`;
    })
    .join("");
}

const stories = loadModel(path.join(MODELS, "stories260K"));

test("one prompt's streamed text ends byte for byte as the whole text printed at the end did", () => {
  const cases: { args: string[]; prompt: string; maxTokens: number; temperature?: number; seed?: number }[] = [
    { args: ["--max-tokens", "40"], prompt: "Once upon a time", maxTokens: 40 },
    // Characters the 512-token vocabulary spells in byte tokens, in the prompt; sampled text may make its own.
    { args: ["--prompt", "Lily said “café ☕” to 日本 😀", "--max-tokens", "30"], prompt: "Lily said “café ☕” to 日本 😀", maxTokens: 30 },
    { args: ["--prompt", "The", "--max-tokens", "120", "--temperature", "1.5", "--seed", "3"], prompt: "The", maxTokens: 120, temperature: 1.5, seed: 3 },
    { args: ["--prompt=", "--max-tokens", "10"], prompt: "", maxTokens: 10 },
    { args: ["--prompt", "Tom", "--max-tokens", "0"], prompt: "Tom", maxTokens: 0 },
  ];
  for (const c of cases) {
    const r = cli(c.args);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, printedWhole(stories, [c.prompt], c), c.args.join(" "));
    assert.doesNotMatch(r.stderr, /differs from the whole/);
  }
});

test("several prompts are printed whole at the end, each after its --- line, as before", () => {
  const r = cli(["--prompt", "Once", "--prompt", "Tom had a", "--max-tokens", "12"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, printedWhole(stories, ["Once", "Tom had a"], { maxTokens: 12 }));
});

test("a chat's streamed reply ends as the reply printed whole did (special tokens and the stop token left out)", () => {
  const dir = path.join(tmpDir(), "stories-chat");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const cfgFile = path.join(dir, "tokenizer_config.json");
  const template = "{% for m in messages %}{{ bos_token + '[' + m.role + '] ' + m.content }}{% endfor %}{% if add_generation_prompt %}{{ ' [reply]' }}{% endif %}";
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, "utf8")), bos_token: "<s>", eos_token: "</s>", chat_template: template }));
  const lm = loadModel(dir);
  const cases = [
    { prompt: "Tell me about a cat", args: ["--max-tokens", "40"], o: { maxTokens: 40, chat: {} } },
    { prompt: "Hi", args: ["--system", "Be brief.", "--max-tokens", "60", "--temperature", "1", "--seed", "2"], o: { maxTokens: 60, temperature: 1, seed: 2, chat: { system: "Be brief." } } },
  ];
  for (const c of cases) {
    const r = spawnSync(process.execPath, [MAIN, "generate", dir, "--chat", "--prompt", c.prompt, ...c.args, "--device", "reference"], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, printedWhole(lm, [c.prompt], c.o), c.args.join(" "));
  }
});

test("a chat template that renders a prompt as nothing is named as the cause, not the prompt", () => {
  const dir = path.join(tmpDir(), "stories-empty-chat");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const cfgFile = path.join(dir, "tokenizer_config.json");
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, "utf8")), chat_template: "{% for m in messages %}{% endfor %}" }));
  const r = spawnSync(process.execPath, [MAIN, "generate", dir, "--chat", "--prompt", "hello there", "--device", "reference"], { encoding: "utf8" });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /the chat template \(.*tokenizer_config\.json.*\) rendered --prompt "hello there" as nothing\n  hint: check the template/);
});

test("Ctrl-C keeps the text generated so far: it was on stdout as it came", async () => {
  const done = cli(["--max-tokens", "25"]).stdout.replace(/\n$/, "");
  const child = spawn(process.execPath, [MAIN, "generate", "stories260K", "--max-tokens", "1000000", "--device", "reference"], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const watched = watchChild(child);
  // Past the prompt by a few words: the continuation is streaming, the run far from its end.
  await watched.until(() => out.length > "Once upon a time".length + 30, "streamed continuation text");
  child.kill("SIGINT");
  assert.equal(await watched.exited, 130, watched.stderr());
  assert.ok(out.length > "Once upon a time".length + 30);
  // Stopped after its step: the text ends its line, and stderr says what it is (not "no partial output").
  assert.ok(out.endsWith("\n"), JSON.stringify(out.slice(-20)));
  assert.match(watched.stderr(), /stopped \(SIGINT\): the text printed is what was generated before the stop/);
  out = out.replace(/\n$/, "");
  // Greedy: the cut-off text and a finished shorter run are both the start of one text.
  assert.ok(out.startsWith(done) || done.startsWith(out), `${JSON.stringify(out)} vs ${JSON.stringify(done)}`);
});

test("Ctrl-C with several prompts prints each one's text so far after its --- line, then exits 130", async () => {
  const child = spawn(process.execPath, [MAIN, "generate", "stories260K", "--prompt", "Once", "--prompt", "Tom", "--max-tokens", "1000000", "--device", "reference"], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const watched = watchChild(child);
  // Decoding: the progress line has counted some tokens.
  await watched.until(() => /generate [1-9]\d* ?\/|generate \d+\.\d+k\//.test(watched.stderr()), "decode progress");
  child.kill("SIGINT");
  assert.equal(await watched.exited, 130, watched.stderr());
  const m = /^--- 1\n(Once[^]*)\n--- 2\n(Tom[^]*)\n$/.exec(out);
  assert.ok(m, JSON.stringify(out));
  assert.ok(m[1]!.length > "Once".length && m[2]!.length > "Tom".length, "both continued");
});

test("--top-k, --top-p and --min-p without --temperature are refused, naming them, before the model loads (--seed is taken: scripts pass one always)", () => {
  for (const [args, named] of [
    [["--top-k", "5"], "--top-k has"],
    [["--top-k", "3", "--top-p", "0.9"], "--top-k and --top-p have"],
    [["--temperature", "0", "--min-p", "0.1"], "--min-p has"],
  ] as const) {
    const r = cli([...args, "--max-tokens", "2"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^error: ${named} no effect without --temperature T > 0 \\(settings of sampling; --temperature 0, the default, is greedy\\)\n  hint: add e\\.g\\. --temperature 0\\.8, or leave`));
    assert.equal(r.stdout, "");
  }
  const sampled = cli(["--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.05", "--seed", "2", "--max-tokens", "3"]);
  assert.equal(sampled.code, 0, sampled.stderr);
  const greedySeeded = cli(["--seed", "3", "--max-tokens", "2"]);
  assert.equal(greedySeeded.code, 0, greedySeeded.stderr);
});

test("a penalty out of range is refused before the model loads, as the sampling flags are", () => {
  for (const [args, named] of [
    [["--repetition-penalty", "0"], "--repetition-penalty 0 is not a number above 0"],
    [["--presence-penalty", "3"], "--presence-penalty 3 is not a number from -2 to 2"],
    [["--frequency-penalty", "-2.5"], "--frequency-penalty -2.5 is not a number from -2 to 2"],
  ] as const) {
    const r = cli([...args, "--max-tokens", "2"]);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.stderr.startsWith(`error: ${named}`), r.stderr);
    assert.equal(r.stdout, "");
  }
});

test("a model whose config has no bos_token_id: the BOS its tokenizer adds is left out of the printed text, streamed or not", () => {
  const dir = path.join(tmpDir(), "bosnull");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const cfg = path.join(dir, "config.json");
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, "utf8")), bos_token_id: null }));
  for (const prompts of [["Once upon"], ["Once upon", "A cat"]]) {
    const r = spawnSync(process.execPath, [MAIN, "generate", dir, ...prompts.flatMap((p) => ["--prompt", p]), "--max-tokens", "3", "--device", "reference"], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /<s>/, r.stdout);
    assert.match(r.stdout, prompts.length > 1 ? /^--- 1\nOnce upon/ : /^Once upon/);
  }
});
