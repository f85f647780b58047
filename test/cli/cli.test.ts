import assert from "node:assert/strict";
import { spawnSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { ROOT, SHARED, FIXTURES, tmpDir, watchChild } from "../helpers.js";

const MAIN = path.join(ROOT, "dist", "src", "cli", "main.js");

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

test("--help lists the commands", () => {
  const r = cli(["--help"]);
  assert.equal(r.code, 0);
  for (const c of ["inspect", "eval", "generate", "synth"]) assert.match(r.stdout, new RegExp(`mha2mla ${c}`));
});

test("no command's help shows an argument both [required] and with a default (report <results..> showed [default: []])", () => {
  const commands = [...cli(["--help"]).stdout.matchAll(/^ {2}mha2mla (\S+)/gm)].map((m) => m[1]!);
  assert.ok(commands.includes("report"), commands.join(" "));
  for (const c of commands) {
    const help = cli([c, "--help"]).stdout;
    // A described item's tags may wrap onto the next line: join lines before matching.
    assert.doesNotMatch(help.replace(/\s+/g, " "), /\[required\] \[default:/, `mha2mla ${c} --help`);
  }
  assert.match(cli(["report", "--help"]).stdout, /results +JSON files from `eval --json` +\[array\] \[required\]\n/);
});

test("inspect --json holds the documented fields (KV = 2·Hkv·Dh·layers)", () => {
  const r = cli(["inspect", "stories260K", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.params, 260032);
  assert.deepEqual([j.layers, j.heads, j.kv_heads, j.head_dim, j.dtype], [5, 8, 4, 8, "f32"]);
  assert.equal(j.kv_elems_per_token, 2 * 4 * 8 * 5);
  assert.equal(j.kv_bytes_per_token, 2 * 4 * 8 * 5 * 4);
  assert.equal(JSON.parse(cli(["inspect", "stories260K-mha", "--json"]).stdout).kv_elems_per_token, 2 * 8 * 8 * 5);
});

test("generate continues a prompt; --kv-cache auto (the default) is f32 on the CPU, so it equals --kv-cache f32; bf16 and int8 caches run too", () => {
  const run = (...extra: string[]) => cli(["generate", "stories260K", "--prompt", "Once upon a time", "--max-tokens", "12", "--device", "cpu", ...extra]);
  const auto = run();
  assert.equal(auto.code, 0, auto.stderr);
  assert.match(auto.stdout, /^Once upon a time\S*\s*\S/);
  assert.equal(run("--kv-cache", "f32").stdout, auto.stdout);
  for (const kv of ["bf16", "int8"]) assert.equal(run("--kv-cache", kv).code, 0);
  // The penalties reach generate(): here they change the greedy text.
  const penalized = run("--repetition-penalty", "10", "--frequency-penalty", "0.5");
  assert.equal(penalized.code, 0, penalized.stderr);
  assert.notEqual(penalized.stdout, auto.stdout);
  assert.match(run("--presence-penalty", "5").stderr, /--presence-penalty 5 is not a number from -2 to 2/);
  // Several prompts: each continuation after its --- line, the first as it is alone; the decode rate on stderr.
  const two = run("--prompt", "The cat"); // after run()'s own --prompt
  assert.equal(two.code, 0, two.stderr);
  const parts = two.stdout.split(/^--- \d+\n/m).slice(1);
  assert.equal(parts.length, 2);
  assert.equal(parts[0], auto.stdout);
  assert.match(parts[1]!, /^The cat/);
  assert.match(two.stderr, /decoded \d+ tokens in all for 2 prompts, past each one's first \(which its prefill gives\) in [\d.]+ s \([\d.]+ tokens\/s\); steps op by op/);
  // --prompt takes one word after it: the model may follow it.
  const before = cli(["generate", "--prompt", "The cat", "stories260K", "--max-tokens", "3", "--device", "cpu"]);
  assert.equal(before.code, 0, before.stderr);
  assert.match(before.stdout, /^The cat/);
  const bad = run("--kv-cache", "int3");
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /int3/);
});

const tinyStories = path.join(SHARED, "data", "text", "tinystories_val.txt");
const haveShared = fs.existsSync(tinyStories);

for (const model of ["stories260K", "stories260K-mha"]) {
  test(`eval ${model} on TinyStories (ctx 256, 50,000 tokens) reports NLL 1.5321 ± 0.0005 as HF does`, { skip: haveShared ? false : `needs ${tinyStories}` }, () => {
    const out = path.join(tmpDir(), "out.json");
    const r = cli(["eval", model, "--text", tinyStories, "--ctx", "256", "--tokens", "50000", "--json", out]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(fs.readFileSync(out, "utf8"));
    for (const k of ["model", "text", "ctx", "tokens", "nll", "ppl", "seconds"]) assert.ok(k in j, `missing ${k}`);
    assert.equal(j.tokens, 50000);
    assert.ok(Math.abs(j.nll - 1.53208) <= 0.0005, `nll ${j.nll}`);
    assert.ok(Math.abs(j.ppl - 4.628) < 0.003, `ppl ${j.ppl}`);
  });
}

test("a flag given twice, a number that is not one, and a bad --temperature are one clear error each, naming the flag and what was typed", () => {
  for (const [args, re] of [
    [["convert", "stories260K", "--rank", "4", "--rank", "5"], /--rank was given 2 times \(4, 5\)[\s\S]*give --rank once/],
    [["inspect", "stories260K", "--json", "a.json", "--json", "b.json"], /--json was given 2 times/],
    // As typed: yargs reads 2k as NaN, and folds repeated numbers (--ctx 64 --ctx 1 → 65).
    [["finetune", "stories260K", "--data", "x.txt", "--out", "o", "--tokens", "2k", "--tokens", "3k"], /--tokens was given 2 times \(2k, 3k\)/],
    [["eval", "stories260K", "--ctx", "64", "--ctx=1"], /--ctx was given 2 times \(64, 1\)/],
    [["convert", "stories260K", "--rank", "abc"], /--rank abc is not a number/],
    [["generate", "stories260K", "--max-tokens=lots"], /--max-tokens lots is not a number\n  hint: give --max-tokens a whole number of tokens to generate, e\.g\. 256/],
    [["generate", "stories260K", "--temperature", "-1", "--max-tokens", "2"], /--temperature -1 is not a sampling temperature/],
    [["generate", "stories260K", "--temperature", "1", "--seed", "4294967296", "--max-tokens", "2"], /--seed 4294967296 is not a whole number in \[0, 2\^32\)/],
    // Prompt i draws from seed + i: the last prompt's seed must fit too; past 2^53 the hint is --seed's own range.
    [["generate", "stories260K", "--prompt", "a", "--prompt", "b", "--temperature", "1", "--seed", "4294967295"], /--seed 4294967295 is not a whole number in \[0, 2\^32 − 2\] \(prompt i draws from seed \+ i, and there are 2 prompts\)/],
    [["generate", "stories260K", "--seed", "99999999999999999999"], /--seed 99999999999999999999 is beyond 2\^53[^\n]*\n  hint: give --seed a whole number below 2\^32 \(4294967296\), e\.g\. --seed 0/],
    // Checked before any scoring: a --json path under a file, a task file missing from --data-dir.
    [["eval", "stories260K", "--text", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--json", path.join(FIXTURES, "text", "tinystories.txt", "x.json")], /--json .*x\.json: .*tinystories\.txt is a file, not a folder/],
    [["eval", "stories260K", "--tasks", "piqa", "--data-dir", path.join(FIXTURES, "text")], /task file .*piqa\.test\.json \(piqa\) does not exist/],
    [["eval", "stories260K", "--text", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--tokens", "0"], /--tokens 0 is not a positive count/],
    [["inspect", "stories260K", "--json", tmpDir()], /--json .* is a folder, not a file[\s\S]*--json takes the path of the file to write/],
    [["inspect", path.join(ROOT, "fixtures", "models", "stories260K", "config.json")], /is a file of a model folder, not the folder/],
    [["convert", "stories260K", "--rank", "4", "--rope-strategy", "2-norm", "--calib", path.join(FIXTURES, "text"), "--out", path.join(tmpDir(), "o")], /is a folder, not a text file/],
    // Files written over inputs: a model's own config, and report's output over its input.
    [["eval", "stories260K", "--text", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--json", path.join(ROOT, "fixtures", "models", "stories260K", "config.json")], /--json .* is the input model folder or inside it/],
    [["report", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--out", path.join(FIXTURES, "text", "tinystories_25k.txt")], /--out .* is an input/],
    [["eval", "stories260K", "--text", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--ctx", "64", "--ctx", "1"], /--ctx was given 2 times/],
    [["synth", "--arch", "llama2-7b", "--layers", "1", "--shard-size", "0", "--out", path.join(tmpDir(), "s")], /--shard-size 0 GiB.* is not a size/],
  ] as const) {
    const r = cli([...args]);
    assert.equal(r.code, 1, args.join(" "));
    assert.match(r.stderr, re, args.join(" "));
    assert.doesNotMatch(r.stderr, /internal error|    at /, args.join(" "));
  }
  // Environment switches with values their readers would silently ignore.
  const text = path.join(FIXTURES, "text", "tinystories_25k.txt");
  for (const [env, args, re] of [
    [{ MHA2MLA_READ_AHEAD_MB: "abc" }, ["convert", "stories260K", "--rank", "4", "--out", path.join(tmpDir(), "o")], /MHA2MLA_READ_AHEAD_MB=abc is not a size in MB/],
    [{ MHA2MLA_EVAL_DATA: "/nonexistent-eval-data" }, ["eval", "stories260K", "--tasks", "arc-easy", "--limit", "2"], /MHA2MLA_EVAL_DATA=\/nonexistent-eval-data does not exist/],
    [{ MHA2MLA_BLAS: "foo" }, ["eval", "stories260K", "--text", text, "--tokens", "50", "--device", "cpu"], /MHA2MLA_BLAS=foo is not known/],
    // Named as the environment's, not as the --api-key flag nobody passed.
    [{ MHA2MLA_API_KEY: "sk 1" }, ["serve", "stories260K", "--device", "cpu", "--port", "0"], /^error: the environment's MHA2MLA_API_KEY holds characters other than visible ASCII/],
  ] as const) {
    // MHA2MLA_BLAS is checked as the native CPU library loads: only where it is built.
    if ("MHA2MLA_BLAS" in env && !fs.existsSync(path.join(ROOT, "build", "native", "libmla_cpu.so"))) continue;
    const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", env: { ...process.env, ...env } });
    assert.equal(r.status, 1, JSON.stringify(env));
    assert.match(r.stderr, re, JSON.stringify(env));
  }
});

test("eval on a short fixture text; bad input gives one clear error line and exit 1, no stack", () => {
  const r = cli(["eval", "stories260K", "--text", path.join(FIXTURES, "text", "tinystories.txt"), "--ctx", "64", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(JSON.parse(r.stdout.slice(r.stdout.indexOf("{"))).nll < 2.5);
  for (const args of [["eval", "no-such-model", "--text", "x"], ["eval", "stories260K", "--text", "/no/such/file"], ["synth", "--arch", "gpt9", "--out", tmpDir() + "/x"], ["eval", "stories260K", "--text", path.join(FIXTURES, "text", "alice.txt"), "--ctx", "1"]]) {
    const b = cli(args);
    assert.equal(b.code, 1, args.join(" "));
    assert.match(b.stderr, /^error: /m);
    assert.match(b.stderr, /hint:/);
    assert.doesNotMatch(b.stderr, /\n\s+at /, "no stack trace");
  }
});

test("convert --kv-split per-layer prints each layer's split and the uniform conversion's KV; a bad --kv-split-pairs is one error line", () => {
  const out = path.join(tmpDir(), "pl");
  const r = cli(["convert", "stories260K", "--rank", "8", "--rope-pairs", "1", "--calib", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--calib-samples", "4", "--kv-split", "per-layer", "--out", out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /KV cache per token 320 → 200 elements/);
  assert.match(r.stdout, /^split per layer \(R, rank\): \d, \d( \| \d, \d){4}$/m);
  assert.match(r.stderr, /kv split, layer 4: R \d rank \d \(error [\d.]+; uniform R 1 rank 8: [\d.]+\)/);
  const b = cli(["convert", "stories260K", "--rank", "8", "--calib", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--kv-split", "per-layer", "--kv-split-pairs", "1,x", "--dry-run"]);
  assert.equal(b.code, 1);
  assert.match(b.stderr, /^error: --kv-split-pairs 1,x: "x" is not a whole number/m);
  assert.match(cli(["convert", "--help"]).stdout, /--kv-split\s/);
});

test("synth --arch llama2-7b --layers 2 writes a sharded bf16 checkpoint that reads back", () => {
  const out = path.join(tmpDir(), "syn");
  const r = cli(["synth", "--arch", "llama2-7b", "--layers", "2", "--out", out, "--shard-size", "0.5", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const ck = Checkpoint.open(out);
  const q = ck.entry("model.layers.1.self_attn.q_proj.weight");
  assert.deepEqual([q.dtype, ...q.shape], ["BF16", 4096, 4096]);
  assert.equal(ck.names().length, 1 + 2 * 9 + 2);
  const norm = ck.readF32("model.layers.0.input_layernorm.weight");
  assert.ok(norm.every((x) => x === 1));
  const w = ck.readF32("model.layers.0.mlp.down_proj.weight").subarray(0, 100000);
  const std = Math.sqrt(w.reduce((a, x) => a + x * x, 0) / w.length);
  assert.ok(Math.abs(std - 0.02) < 0.001, `std ${std}`);
  ck.close();
  const inspect = JSON.parse(cli(["inspect", out, "--json"]).stdout);
  assert.equal(inspect.kv_elems_per_token, 2 * 32 * 128 * 2);
  assert.equal(inspect.kv_bytes_per_token, 2 * 32 * 128 * 2 * 2);
  assert.ok(fs.readdirSync(out).includes("model.safetensors.index.json"));
  assert.equal(cli(["synth", "--arch", "llama2-7b", "--layers", "1", "--out", out]).code, 1, "existing --out refused without --force");
  fs.rmSync(out, { recursive: true });
});

test("an interrupted synth leaves neither the output nor a temporary folder", async () => {
  const parent = tmpDir();
  const out = path.join(parent, "big");
  const child = spawn(process.execPath, [MAIN, "synth", "--arch", "llama2-7b", "--layers", "8", "--out", out], { stdio: ["ignore", "ignore", "pipe"] });
  const watched = watchChild(child);
  // Interrupt once the temporary folder exists (signal handlers are set before any command runs),
  // not after a fixed delay: on a busy machine the CLI may not have started yet.
  await watched.until(() => fs.readdirSync(parent).some((n) => n.includes(".tmp-")), "synth's temporary folder");
  child.kill("SIGINT");
  assert.equal(await watched.exited, 130, watched.stderr());
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("a long generate shows its progress and stops on SIGINT (exit 130) instead of running to the end", async () => {
  const child = spawn(process.execPath, [MAIN, "generate", "stories260K", "--max-tokens", "1000000"], { stdio: ["ignore", "ignore", "pipe"] });
  const watched = watchChild(child);
  await watched.until(() => /generate [\d.k]+\/[\d.kM]+ tokens/.test(watched.stderr()), "generate's progress line");
  assert.match(watched.stderr(), /warning: .* pass the model's 512 positions/);
  child.kill("SIGINT");
  assert.equal(await watched.exited, 130, watched.stderr());
});

test("generate prints no stop token: mha26m-debian ends this sample at EOS (it printed 'Package: vim.</s>')", { skip: fs.existsSync(path.join(SHARED, "models", "mha26m-debian")) ? false : "../shared/models/mha26m-debian is not here" }, () => {
  const r = cli(["generate", path.join(SHARED, "models", "mha26m-debian"), "--device", "cpu", "--temperature", "1", "--seed", "1", "--prompt", "Package: vim"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Package: vim/);
  assert.doesNotMatch(r.stdout, /<\/s>/);
});
