import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { thinned } from "../../src/eval/report/charts.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { writeReport } from "../../src/eval/report/report.js";
import { pipeline } from "../../src/pipeline.js";
import { convert } from "../../src/convert/pipeline.js";
import type { TaskName } from "../../src/eval/tasks/index.js";
import { FIXTURES, MODELS, ROOT, SHARED, tmpDir } from "../helpers.js";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p));
const DATA = path.join(SHARED, "data", "eval");
const TEXT = path.join(FIXTURES, "text", "tinystories_heldout.txt");

/** Headless Chromium screenshot of a local file (flags: no network, no sandbox as root, fresh profile). */
function screenshot(html: string, png: string): void {
  const profile = tmpDir("chromium-");
  const r = spawnSync(CHROMIUM!, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", `--user-data-dir=${profile}`, "--hide-scrollbars", "--window-size=1150,1900", `--screenshot=${png}`, "file://" + html], { encoding: "utf8", timeout: 60000 });
  assert.ok(fs.existsSync(png), `chromium wrote no screenshot: ${r.stderr}`);
}

test("report: HTML with inline SVG charts renders in headless Chromium; the Markdown twin holds the same numbers", { skip: CHROMIUM ? false : "Chromium is not installed (.ci/run installs it; run `apt-get install chromium`)" }, async () => {
  const dir = tmpDir();
  const mla = path.join(dir, "mla");
  await convert(path.join(MODELS, "stories260K"), { rank: 4, ropePairs: 2, ropeStrategy: "uniform", out: mla, progress: null });
  // --data-dir and --limit only with tasks: alone they are refused (they would do nothing).
  const tasks = fs.existsSync(DATA) ? { tasks: ["arc-easy", "piqa"] as TaskName[], dataDir: DATA, limit: 20 } : {};
  const before = await evaluate(path.join(MODELS, "stories260K"), { text: TEXT, ...tasks, label: "original", progress: null });
  const after = await evaluate(mla, { text: TEXT, ...tasks, label: "MLA r4", progress: null });
  const files = [path.join(dir, "a.json"), path.join(dir, "b.json")];
  fs.writeFileSync(files[0]!, JSON.stringify(before));
  fs.writeFileSync(files[1]!, JSON.stringify(after));
  const r = writeReport(files, path.join(dir, "report.html"));
  const html = fs.readFileSync(r.html, "utf8");
  const md = fs.readFileSync(r.md, "utf8");
  // Perplexity and KV charts, and the tasks' where their data is beside the checkout.
  assert.ok((html.match(/<svg /g) ?? []).length >= (tasks.tasks ? 3 : 2), "charts are inline SVG");
  assert.doesNotMatch(html, /<script|(src|href)=["']?https?:|@import|url\(/, "self-contained: no scripts, no network");
  const kvChange = `−${(100 * (1 - after.kv_elems_per_token / before.kv_elems_per_token)).toFixed(2)}%`;
  for (const n of [before.ppl!.toFixed(3), after.ppl!.toFixed(3), kvChange, String(after.kv_bytes_per_token)]) {
    assert.ok(html.includes(n), `HTML has ${n}`);
    assert.ok(md.includes(n), `Markdown has ${n}`);
  }
  const png = path.join(dir, "report.png");
  screenshot(r.html, png);
  const bytes = fs.readFileSync(png);
  assert.equal(bytes.subarray(1, 4).toString(), "PNG");
  assert.ok(bytes.length > 30000, `a blank page compresses to a few KB; got ${bytes.length} bytes`);
});

test("report refuses files that are not eval results", () => {
  const f = path.join(tmpDir(), "x.json");
  fs.writeFileSync(f, '{"hello": 1}');
  assert.throws(() => writeReport([f], path.join(tmpDir(), "r.html")), (e: Error) => e instanceof MlaError && /x\.json: not an eval result/.test(e.message));
  fs.writeFileSync(f, "{");
  assert.throws(() => writeReport([f], path.join(tmpDir(), "r.html")), (e: Error) => e instanceof MlaError && /not valid JSON/.test(e.message));
});

test("report refuses binary data given as an eval JSON or a training log by its first bytes, not with a parse error quoting them raw", () => {
  const dir = tmpDir();
  const weights = path.join(MODELS, "stories260K", "model.safetensors");
  const bin = path.join(dir, "x.json");
  fs.writeFileSync(bin, Buffer.from([0x7b, 0x00, 0xff, 0xfe, 0x01, 0x9b, 0x5b, 0x32, 0x4a]));
  const out = path.join(dir, "r.html");
  const refused = (what: RegExp) => (e: Error) => e instanceof MlaError && e.code === "BAD_TEXT" && what.test(e.message) && !/Unexpected token|[\u0000-\u0008\u001b\ufffd]/.test(e.message);
  assert.throws(() => writeReport([bin], out), refused(/x\.json is not a text file: its start holds NUL bytes[^\n]*\n {2}hint: pass JSON files written by `mha2mla eval --json FILE`$/));
  assert.throws(() => writeReport([weights], out), refused(/model\.safetensors is not a text file: its start looks like a safetensors checkpoint/));
  const evalJson = path.join(dir, "e.json");
  fs.writeFileSync(evalJson, JSON.stringify({ model: "m", attention: "mha", backend: "cpu", kv_elems_per_token: 1, seconds: 1 }));
  assert.throws(() => writeReport([evalJson], out, { trainLogs: [bin] }), refused(/x\.json is not a text file[^\n]*\n {2}hint: pass the train_log\.jsonl written by `mha2mla finetune`/));
  assert.deepEqual(fs.readdirSync(dir).sort(), ["e.json", "x.json"], "nothing written");
});

test("pipeline: convert → fine-tune → three evaluations → report; a re-run skips finished phases", async () => {
  const out = path.join(tmpDir(), "pl");
  const opts = {
    out,
    convert: { rank: 4, ropePairs: 1, ropeStrategy: "high" as const },
    finetune: { data: [path.join(FIXTURES, "text", "tinystories_25k.txt")], tokens: 6 * 8 * 64, seq: 64, batch: 8 },
    evalText: TEXT,
    ...(fs.existsSync(DATA) ? { tasks: ["arc-easy"] as TaskName[], dataDir: DATA, limit: 10 } : {}),
    progress: null,
  };
  const r = await pipeline(path.join(MODELS, "stories260K"), opts);
  assert.deepEqual(r.phases.map((p) => p.name), ["convert", "eval original", "eval converted", "finetune", "eval fine-tuned", "report"]);
  assert.deepEqual(r.evals.map((e) => e.label), ["original", "converted", "fine-tuned"]);
  assert.ok(r.evals[2]!.nll! < r.evals[1]!.nll!, "fine-tuning recovers some of the loss");
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, "finetune", "mla_conversion.json"), "utf8")), JSON.parse(fs.readFileSync(path.join(out, "mla", "mla_conversion.json"), "utf8")), "the fine-tuned model keeps the conversion's record");
  const md = fs.readFileSync(path.join(out, "report.md"), "utf8");
  assert.match(md, /\| metric \| original \| converted \| fine-tuned \|/);
  const again = await pipeline(path.join(MODELS, "stories260K"), opts);
  assert.ok(again.phases.filter((p) => p.name !== "report").every((p) => p.skipped));
  await assert.rejects(pipeline(path.join(MODELS, "stories260K"), { ...opts, convert: { ...opts.convert, rank: 2 } }), /other settings/);
  // --force with an input that does not exist is refused before it clears the finished run.
  await assert.rejects(pipeline(path.join(MODELS, "stories260K"), { ...opts, force: true, convert: { ...opts.convert, calib: path.join(tmpDir(), "missing.txt") } }), /cannot read --calib .*missing\.txt: no such file or folder\n  hint: check the path and its permissions; nothing was changed/);
  assert.ok(fs.existsSync(path.join(out, "report.md")), "the finished run is kept");
});

test("the committed report screenshot exists", () => {
  assert.ok(fs.statSync(path.join(ROOT, "docs", "report-screenshot.png")).size > 30000);
});

test("report: a quantized cache's bytes and dtype, a log with no validation (null), a label with |, and --out NAME.md", async () => {
  const dir = tmpDir();
  const model = path.join(MODELS, "stories260K");
  const plain = await evaluate(model, { text: TEXT, tokens: 600, label: "bf16|fp32", progress: null });
  const int4 = await evaluate(model, { text: TEXT, tokens: 600, kvCache: "int4", label: "int4", progress: null });
  const files = [path.join(dir, "a.json"), path.join(dir, "b.json")];
  fs.writeFileSync(files[0]!, JSON.stringify(plain));
  fs.writeFileSync(files[1]!, JSON.stringify(int4));
  const log = path.join(dir, "run", "train_log.jsonl");
  fs.mkdirSync(path.dirname(log));
  // finetune --val-fraction 0 logs its validations as null.
  fs.writeFileSync(log, [{ step: 0, val_nll: null }, { step: 1, loss: 3.5, elapsed_s: 1 }, { step: 2, loss: 3.25, elapsed_s: 2 }, { step: 2, val_nll: null }].map((x) => JSON.stringify(x)).join("\n") + "\n");
  const r = writeReport(files, path.join(dir, "out", "r.md"), { trainLogs: [log] });
  assert.deepEqual([path.basename(r.md), path.basename(r.html)], ["r.md", "r.html"], "NAME.md is the Markdown, its twin NAME.html");
  const md = fs.readFileSync(r.md, "utf8");
  const html = fs.readFileSync(r.html, "utf8");
  assert.match(md, /^\| metric \| bf16\\\|fp32 \| int4 \|$/m, "a | in a label is escaped");
  assert.ok(int4.kv_cache!.bytes_per_token < plain.kv_bytes_per_token);
  for (const text of [md, html]) {
    assert.ok(text.includes(`${plain.kv_bytes_per_token} | ${int4.kv_cache!.bytes_per_token} (`) || text.includes(`<td>${int4.kv_cache!.bytes_per_token} (`), "the int4 cache's bytes");
    assert.match(text, /KV cache int4/);
    assert.match(text, /tinystories_heldout\.txt \(600 tokens, ctx/, "both list what each run read");
  }
  assert.match(md, /2 steps; loss 3\.5000 → 3\.2500; validation NLL –/);
});

test("reports name an EG-MLA gate, disjoint rope pairs, unbalanced K/V and a refit: conversions that differ read differently", async () => {
  const dir = tmpDir();
  const eg = path.join(dir, "eg");
  const calib = path.join(FIXTURES, "text", "tinystories.txt");
  await convert(path.join(MODELS, "stories260K"), { rank: 4, ropePairs: 1, ropeStrategy: "uniform", ropeDisjoint: true, attention: "eg-mla", gateDim: 4, balanceKv: false, refitOutput: true, calib, evalText: TEXT, evalTokens: 300, out: eg, progress: null, device: "cpu" });
  assert.match(fs.readFileSync(path.join(eg, "report.md"), "utf8"), /^Settings: EG-MLA gate of 4 dims per token, rank 4 per KV head, 1 RoPE pair \(uniform, disjoint across KV heads\), SVD joint \(weights, K\/V not balanced\), o_proj refit on the calibration text, calibration /m);
  const file = path.join(dir, "eg.json");
  fs.writeFileSync(file, JSON.stringify(await evaluate(eg, { text: TEXT, tokens: 300, progress: null })));
  const md = fs.readFileSync(writeReport([file], path.join(dir, "r.html")).md, "utf8");
  assert.match(md, /EG-MLA \(gate 4 dims per token\): rank 4, 1 RoPE pair \(uniform, disjoint across KV heads\)/);
});

test("report: an earlier report at --out (or its .md twin) is replaced; another file there is refused unless force, and kept", () => {
  const dir = tmpDir();
  const base = { model: "m", label: "a", dir: "/m", config_hash: "x", attention: "mha", conversion: null, params: 1, kv_elems_per_token: 8, kv_bytes_per_token: 32, backend: "cpu", seconds: 1 };
  const json = path.join(dir, "a.json");
  fs.writeFileSync(json, JSON.stringify(base));
  const out = path.join(dir, "results.html");
  writeReport([json], out);
  writeReport([json], out); // re-run: its own earlier files are replaced
  fs.writeFileSync(path.join(dir, "results.md"), "# my notes\n");
  assert.throws(() => writeReport([json], out), (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /results\.md exists and is not an earlier mha2mla report \(the Markdown twin of --out \S*results\.html\)\n  hint: choose another --out, or pass --force/.test(e.message));
  assert.equal(fs.readFileSync(path.join(dir, "results.md"), "utf8"), "# my notes\n");
  writeReport([json], out, { force: true });
  assert.match(fs.readFileSync(path.join(dir, "results.md"), "utf8"), /^# mha2mla evaluation report/);
});

test("report: runs sharing a label get their cache type, else their position, in the header; --labels naming a column twice is refused", () => {
  const dir = tmpDir();
  const base = { model: "m", label: "m", dir: "/m", config_hash: "x", attention: "mha", conversion: null, params: 1, kv_elems_per_token: 8, kv_bytes_per_token: 32, backend: "cpu", seconds: 1 };
  const files = [base, { ...base, kv_cache: { dtype: "f32", bytes_per_token: 32 } }, { ...base, kv_cache: { dtype: "int4", bytes_per_token: 5 } }, base].map((o, i) => {
    const f = path.join(dir, `${i}.json`);
    fs.writeFileSync(f, JSON.stringify(o));
    return f;
  });
  const md = fs.readFileSync(writeReport(files, path.join(dir, "r.html")).md, "utf8");
  assert.match(md, /^\| metric \| m \| m \(f32 cache\) \| m \(int4 cache\) \| m #2 \|$/m);
  // Every run of a shared label gets its cache type, the last too (it was counted after the others' renaming).
  const cached = (dtype: string, i: number) => {
    const f = path.join(dir, `c${i}.json`);
    fs.writeFileSync(f, JSON.stringify({ ...base, kv_cache: { dtype, bytes_per_token: 8 } }));
    return f;
  };
  const mixed = fs.readFileSync(writeReport(["f32", "bf16", "f32"].map(cached), path.join(dir, "r3.html")).md, "utf8");
  assert.match(mixed, /^\| metric \| m \(f32 cache\) \| m \(bf16 cache\) \| m \(f32 cache\) #2 \|$/m);
  assert.throws(() => writeReport(files.slice(0, 2), path.join(dir, "r2.html"), { labels: ["a", "a"] }), (e: unknown) => e instanceof MlaError && /--labels names two columns "a"/.test(e.message));
  assert.throws(() => writeReport(files.slice(0, 2), path.join(dir, "r2.html"), { labels: ["x", ""] }), (e: unknown) => e instanceof MlaError && /--labels x, leaves column 2 without a name/.test(e.message));
  // On the command line, a space after a comma is not part of the next name.
  const main = path.join(ROOT, "dist", "src", "cli", "main.js");
  const cli = (labels: string, out: string) => spawnSync(process.execPath, [main, "report", ...files.slice(0, 2), "--labels", labels, "--out", path.join(dir, out)], { encoding: "utf8" });
  assert.equal(cli("orig, mla", "r4.html").status, 0);
  assert.match(fs.readFileSync(path.join(dir, "r4.md"), "utf8"), /^\| metric \| orig \| mla \|$/m);
  const twice = cli("x, x", "r5.html");
  assert.equal(twice.status, 1);
  assert.match(twice.stderr, /^error: --labels names two columns "x"$/m);
});

test("report: an inspect JSON is refused by what it lacks; runs on other data are marked not comparable (no change shown); items scored are listed; bad training logs are refused; --out a folder is refused", async () => {
  const dir = tmpDir();
  const base = { model: "m", label: "a", dir: "/m", config_hash: "x", attention: "mha", conversion: null, params: 1, kv_elems_per_token: 8, kv_bytes_per_token: 32, backend: "cpu", seconds: 1 };
  const write = (name: string, o: unknown) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, typeof o === "string" ? o : JSON.stringify(o));
    return f;
  };
  const inspectLike = write("i.json", { model: "m", attention: "mla", kv_elems_per_token: 8 });
  assert.throws(() => writeReport([inspectLike], path.join(dir, "r.html")), (e: Error) => e instanceof MlaError && /i\.json: not an eval result \(no "backend", "seconds"\)/.test(e.message) && /inspect --json/.test(e.message));
  const a = write("a.json", { ...base, ppl: 4, nll: 1.386, text: "/t/x.txt", tokens: 1000, ctx: 256, tasks: { piqa: { n: 10, acc: 0.7, acc_stderr: 0.15 } } });
  const b = write("b.json", { ...base, label: undefined, ppl: 30, nll: 3.4, text: "/t/x.txt", tokens: 1000, ctx: 16, tasks: { piqa: { n: 100, acc: 0.46, acc_stderr: 0.05 } } });
  const md = fs.readFileSync(writeReport([a, b], path.join(dir, "r.html")).md, "utf8");
  assert.match(md, /\| perplexity \| 4\.000 \| 30\.000 \(x\.txt, 1000 tokens, ctx 16; not comparable\) \|/);
  assert.match(md, /\| piqa acc \| 0\.7000 ± 0\.1500 \| 0\.4600 ± 0\.0500 \(100 items; not comparable\) \|/);
  assert.match(md, /\| piqa items scored \| 10 \| 100 \|/);
  // As many items, but other ones (another --data-dir): eval records the items' hash, and the report compares by it.
  const h1 = write("h1.json", { ...base, tasks: { piqa: { n: 10, acc: 0.7, acc_stderr: 0.15, items_hash: "aaaaaaaaaaaaaaaa" } } });
  const h2 = write("h2.json", { ...base, label: "b", tasks: { piqa: { n: 10, acc: 0.5, acc_stderr: 0.15, items_hash: "bbbbbbbbbbbbbbbb" } } });
  const h3 = write("h3.json", { ...base, label: "c", tasks: { piqa: { n: 10, acc: 0.6, acc_stderr: 0.15, items_hash: "aaaaaaaaaaaaaaaa" } } });
  const hmd = fs.readFileSync(writeReport([h1, h2, h3], path.join(dir, "rh.html")).md, "utf8");
  assert.match(hmd, /\| piqa acc \| 0\.7000 ± 0\.1500 \| 0\.5000 ± 0\.1500 \(other items \(10, data bbbbbbbb\); not comparable\) \| 0\.6000 ± 0\.1500 \(−0\.1000\) \|/);
  // A "|" in a cell (here a text's file name) is escaped in the Markdown table, as in its labels.
  const piped = write("p.json", { ...base, ppl: 5, nll: 1.6, text: "/t/my|notes.txt", tokens: 1000, ctx: 256 });
  const pmd = fs.readFileSync(writeReport([a, piped], path.join(dir, "rp.html")).md, "utf8");
  const columns = (line: string) => line.split(/(?<!\\)\|/).length;
  const table = pmd.split("\n").filter((l) => l.startsWith("| "));
  assert.ok(table.every((l) => columns(l) === columns(table[0]!)), table.join("\n"));
  assert.match(pmd, /my\\\|notes\.txt/);
  assert.match(md, /\| metric \| a \| m \|/, "a result without a label is shown by its model");
  for (const [name, text, re] of [
    ["null.jsonl", '{"step": 1, "loss": 3}\nnull\n', /null\.jsonl:2: not a training-log row/],
    ["empty.jsonl", "", /empty\.jsonl: holds no training-log rows/],
    // The run's finetune.json is JSON, but one document, not rows (it read as "finetune.json:1: not valid JSON").
    ["finetune.json", '{\n  "out": "r",\n  "steps": 3\n}\n', /finetune\.json is one JSON document, not a training log \(one JSON row per line\)/],
    // Line numbers are the file's, blank lines counted.
    ["blank.jsonl", '\n{"step": 1}\n\nnope\n', /blank\.jsonl:4: not valid JSON/],
  ] as const) {
    const log = write(name, text);
    assert.throws(() => writeReport([a], path.join(dir, "r2.html"), { trainLogs: [log] }), (e: Error) => e instanceof MlaError && re.test(e.message));
  }
  // Other results of this tool: the hint says what the file is (a conversion's report.json is the natural first try).
  for (const [name, value, re] of [
    ["report.json", { source: "s", output: "o", before: { nll: 1 }, after: { nll: 1 } }, /this is a conversion's or export's result or report/],
    ["finetune.json", { out: "r", steps: 3, stoppedEarly: false }, /this is a fine-tuning run's result/],
    // The run folder's own record, not the --json result.
    ["run-finetune.json", { source: "m", settings: {}, steps: 3, val_nll_before: 2, val_nll_after: 1.5 }, /this is a fine-tuning run's result[\s\S]*--train-log RUN\/train_log\.jsonl/],
    ["inspect.json", { model: "m", dir: "d", kv_bytes_per_token: 4 }, /an `inspect --json` file describes a model, not a run/],
    ["inspect-elems.json", { model: "m", kv_elems_per_token: 4 }, /an `inspect --json` file describes a model, not a run/],
    ["convert.json", { plan: {}, selection: [] }, /this is a conversion's result, not an evaluation/],
    ["export.json", { kvLoraRank: 8 }, /this is a conversion's or export's result or report/],
  ] as const) {
    const f = write(name, value);
    assert.throws(() => writeReport([f], path.join(dir, "r3.html")), (e: Error) => e instanceof MlaError && /not an eval result/.test(e.message) && re.test(e.message), name);
  }
  // A training log given as a result: pointed to --train-log.
  const asResult = write("train_log.jsonl", '{"step": 1, "loss": 3}\n{"step": 2, "loss": 2.9}\n');
  assert.throws(() => writeReport([asResult], path.join(dir, "r3.html")), (e: Error) => e instanceof MlaError && /train_log\.jsonl: not valid JSON[\s\S]*hint: this is a fine-tuning run's training log \(JSON Lines\): pass it with --train-log/.test(e.message));
  fs.mkdirSync(path.join(dir, "folder.html"));
  assert.throws(() => writeReport([a], path.join(dir, "folder.html")), (e: Error) => e instanceof MlaError && /folder\.html is a folder/.test(e.message));
});

test("bar chart: whiskers stay inside the plot when a run lacks a task (values and errors keep their places)", async () => {
  const { barChart } = await import("../../src/eval/report/charts.js");
  const svg = barChart("t", ["piqa acc", "arc acc"], ["A", "B"], [[0.5, null], [0.97, 0.6]], { errors: [[0.05, null], [0.08, 0.05]] });
  const grid = [...svg.matchAll(/<line x1="[^"]+" x2="[^"]+" y1="([\d.]+)" y2="[^"]+" stroke="#ddd"\/>/g)].map((m) => Number(m[1]));
  const whiskers = [...svg.matchAll(/<line x1="([\d.]+)" x2="\1" y1="([-\d.]+)"/g)].map((m) => Number(m[2]));
  assert.equal(whiskers.length, 3);
  assert.ok(Math.min(...whiskers) >= Math.min(...grid) - 1e-9, `a whisker's top ${Math.min(...whiskers)} is above the plot's top ${Math.min(...grid)}`);
});

test("report: a field of the wrong type is refused naming it (it crashed the report); missing optional fields show as –, never 'undefined'; a script's results are checked too", async () => {
  const { reportMarkdown } = await import("../../src/eval/report/report.js");
  const dir = tmpDir();
  const base = { model: "m", label: "a", dir: "/m", config_hash: "x", attention: "mla", conversion: { rank: 4, rope_pairs: 1, rope_strategy: "uniform", svd: "joint", svd_init: "weights", latent_dim: 16 }, params: 1, kv_elems_per_token: 8, kv_bytes_per_token: 32, backend: "cpu", seconds: 1, text: "/t/x.txt", tokens: 100, ctx: 64, nll: 2, ppl: 7.389, tasks: { lambada: { n: 10, acc: 0, acc_stderr: 0, ppl: 12 } } };
  const write = (name: string, o: unknown) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, JSON.stringify(o));
    return f;
  };
  const good = write("good.json", base);
  for (const [name, o, re] of [
    ["strppl.json", { ...base, ppl: "7.4" }, /strppl\.json: "ppl" is a string \("7\.4"\), not a number/],
    ["strtask.json", { ...base, tasks: { lambada: { ...base.tasks.lambada, acc: "0.5" } } }, /"tasks\.lambada\.acc" is a string \("0\.5"\), not a number/],
    ["nulltask.json", { ...base, tasks: { lambada: null } }, /"tasks\.lambada" is null, not an object of scores/],
    ["conv.json", { ...base, conversion: "mla" }, /"conversion" is a string \("mla"\), not an object/],
    ["tasks.json", { ...base, tasks: [1] }, /"tasks" is an array, not an object/],
  ] as const) {
    const f = write(name, o);
    const out = path.join(dir, `${name}.html`);
    assert.throws(() => writeReport([good, f], out), (e: Error) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), name);
    assert.ok(!fs.existsSync(out), "nothing written");
  }
  // An older or hand-made result: no dir, config hash, text/tokens/ctx, and a conversion record with only its rank.
  const { dir: _d, config_hash: _c, text: _t, tokens: _n, ctx: _x, ...sparse } = base;
  const md = fs.readFileSync(writeReport([good, write("sparse.json", { ...sparse, label: "b", conversion: { rank: 2 } })], path.join(dir, "r.html")).md, "utf8");
  assert.doesNotMatch(md, /undefined/);
  assert.match(md, /\| perplexity \| 7\.389 \| 7\.389 \(text, tokens and ctx not recorded; not comparable\) \|/);
  assert.match(md, /^- \*\*b\*\*: – — MLA: rank 2; cpu, 1\.0 s$/m);
  assert.match(md, /\| lambada acc \| 0\.0000 ± 0\.0000 \|/, "a stderr of 0 is shown");
  // The text recorded but its token count and context not (or null): "?" in the Models list too.
  const { tokens: _m, ctx: _y, ...noCounts } = base;
  const md2 = fs.readFileSync(writeReport([good, write("nocounts.json", { ...noCounts, label: "c", text_bytes: null })], path.join(dir, "r2.html")).md, "utf8");
  assert.doesNotMatch(md2, /undefined|null/);
  assert.match(md2, /text x\.txt \(\? tokens, ctx \?\)/);
  // A training log of 200,000 steps (spreading its points into Math.max overflowed the stack); non-finite losses left out of the chart.
  const longLog = path.join(dir, "train_log.jsonl");
  // (1e999 written as such parses to Infinity; JSON.stringify would have written null.)
  fs.writeFileSync(longLog, Array.from({ length: 200_000 }, (_, i) => (i === 5 ? `{"step": 6, "loss": 1e999}` : JSON.stringify({ step: i + 1, loss: 3 - i / 1e5 }))).join("\n") + "\n");
  const html = fs.readFileSync(writeReport([good], path.join(dir, "long.html"), { trainLogs: [longLog] }).html, "utf8");
  assert.match(html, /<polyline /, "the loss curve is drawn");
  assert.doesNotMatch(html, /NaN/);
  // Thinning keeps each run's lowest and highest points: a one-step spike and dip survive, in step order.
  const curve = Array.from({ length: 200_000 }, (_, i): [number, number] => [i + 1, i === 123_456 ? 9 : i === 7 ? -1 : 3 - i / 1e5]);
  const kept = thinned(curve);
  assert.ok(kept.length <= 2000, `${kept.length} points`);
  assert.deepEqual([kept[0], kept[kept.length - 1]], [curve[0], curve[curve.length - 1]]);
  assert.ok(kept.some((p) => p[1] === 9) && kept.some((p) => p[1] === -1), "the spike and the dip are kept");
  assert.ok(kept.every((p, i) => i === 0 || p[0] > kept[i - 1]![0]), "in step order");
  assert.equal(thinned(curve.slice(0, 2000)).length, 2000, "a short series is drawn whole");
  // A length where a float step (2001 / 999) stopped the last run one point short: the second-to-last point is seen.
  const edge = Array.from({ length: 2003 }, (_, i): [number, number] => [i, i === 2001 ? 9 : 3]);
  assert.ok(thinned(edge).some((p) => p[1] === 9), "the point before the last is in a run");
  // A label with a line break or a pipe stays in its cell (the break had ended the table's row).
  const table = reportMarkdown([{ ...base, label: "two\nlines | x" } as never]);
  assert.match(table, /^\| metric \| two lines \\\| x \|$/m);
  assert.match(table, /^- \*\*two lines \| x\*\*: /m, "and its Models list item");
  // From a script: the same check, by position; an overflowed (Infinity) perplexity is a number; no label: the model.
  assert.throws(() => reportMarkdown([{ ...base, seconds: "1" } as never]), (e: Error) => e instanceof MlaError && /^runs\[0\]: "seconds" is a string/.test(e.message));
  assert.match(reportMarkdown([{ ...base, label: undefined, tasks: { lambada: { ...base.tasks.lambada, ppl: Infinity } } } as never]), /\| metric \| m \|[\s\S]*\| lambada ppl \| Infinity \|/);
  fs.mkdirSync(path.join(dir, "run"));
  assert.throws(() => writeReport([good], path.join(dir, "r3.html"), { trainLogs: [path.join(dir, "run")] }), (e: Error) => e instanceof MlaError && /--train-log .*run is a folder, not a training log[\s\S]*hint: pass the log file itself, e\.g\. --train-log .*run\/train_log\.jsonl/.test(e.message));
});

test("writeReport from JavaScript: a lone file name, no out, an unknown or mistyped option are refused as such, not as a TypeError", () => {
  const call = writeReport as unknown as (...a: unknown[]) => unknown;
  for (const [args, re] of [
    [["a.json", "r.html"], /^writeReport\(\): the eval JSON files are "a\.json", not an array of file names/],
    [[["a.json"]], /^writeReport\(\): out is undefined, not a file name/],
    [[["a.json"], "r.html", { trainlogs: [] }], /^writeReport\(\) has no option "trainlogs"/],
    [[["a.json"], "r.html", { labels: "a,b" }], /^writeReport\(\): option labels is "a,b" \(a string\), not an array of strings/],
  ] as const)
    assert.throws(() => call(...args), (e: Error) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && re.test(e.message), String(re));
});

test("report: training logs of two pipelines (both finetune/train_log.jsonl) are titled apart by the folders above them", async () => {
  const { logLabels } = await import("../../src/eval/report/report.js");
  assert.deepEqual(logLabels(["/r/pl1/finetune/train_log.jsonl", "/r/pl2/finetune/train_log.jsonl", "/r/ft/train_log.jsonl"]), ["pl1/finetune", "pl2/finetune", "ft"]);
  assert.deepEqual(logLabels(["/x/a/run/t.jsonl", "/y/a/run/t.jsonl"]), ["x/a/run", "y/a/run"]);
  const dir = tmpDir();
  const json = path.join(dir, "a.json");
  fs.writeFileSync(json, JSON.stringify({ model: "m", attention: "mha", kv_elems_per_token: 8, backend: "cpu", seconds: 1 }));
  const logs = ["pl1", "pl2"].map((p) => {
    const f = path.join(dir, p, "finetune", "train_log.jsonl");
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, '{"step": 1, "loss": 3}\n');
    return f;
  });
  const md = fs.readFileSync(writeReport([json], path.join(dir, "r.html"), { trainLogs: logs }).md, "utf8");
  assert.match(md, /## Fine-tuning: pl1\/finetune\n[\s\S]*## Fine-tuning: pl2\/finetune\n/);
});

test("eval's JSON names its tokenizer and text; report marks NLL and perplexity over another tokenizer or text not comparable, compares bits per byte across tokenizers, and reads older JSONs (tokenizer not recorded)", async () => {
  const dir = tmpDir();
  const model = path.join(MODELS, "stories260K");
  const mla = path.join(dir, "mla");
  await convert(model, { rank: 4, ropePairs: 2, ropeStrategy: "uniform", out: mla, progress: null, device: "cpu" });
  const whole = await evaluate(model, { text: TEXT, progress: null, device: "cpu" });
  const cut = await evaluate(model, { text: TEXT, tokens: 600, progress: null, device: "cpu" });
  const converted = await evaluate(mla, { text: TEXT, tokens: 600, progress: null, device: "cpu" });
  const bytes = fs.readFileSync(TEXT).length;
  assert.equal(whole.text_bytes, bytes, "every token scored: the whole text's bytes");
  assert.ok(cut.text_bytes! > 0 && cut.text_bytes! < bytes);
  assert.equal(converted.text_bytes, cut.text_bytes);
  assert.ok(Math.abs(whole.bits_per_byte! - (whole.nll! * whole.tokens!) / (Math.LN2 * bytes)) < 1e-12);
  assert.deepEqual(converted.tokenizer, cut.tokenizer, "a conversion keeps its source's tokenizer");
  assert.deepEqual(cut.tokenizer, { hash: cut.tokenizer!.hash, vocab_size: 512 });
  assert.match(cut.text_hash!, /^[0-9a-f]{16}$/);
  assert.equal(cut.text_hash, whole.text_hash);

  // Hand-made runs: another tokenizer, another text under the same name, the same text under another name, an older JSON.
  const base = { ...cut, label: "a", tokens: 1000, ctx: 256, text: "/t/x.txt", text_hash: "1111111111111111", text_bytes: 4000, nll: 2, ppl: 7.389, bits_per_byte: 0.7 };
  const runs = {
    a: base,
    tok: { ...base, label: "tok", tokenizer: { hash: "2222222222222222", vocab_size: 32000 }, tokens: 500, nll: 4, ppl: 54.6, bits_per_byte: 0.72 },
    other: { ...base, label: "other", text_hash: "3333333333333333", nll: 2.5, ppl: 12.18 },
    copy: { ...base, label: "copy", text: "/u/y.txt", nll: 2.25, ppl: 9.49 },
    old: { ...base, label: "old", tokenizer: undefined, text_hash: undefined, text_bytes: undefined, bits_per_byte: undefined, nll: 2.5, ppl: 12.18 },
  };
  const files = Object.entries(runs).map(([k, r]) => {
    const f = path.join(dir, `${k}.json`);
    fs.writeFileSync(f, JSON.stringify(r));
    return f;
  });
  const md = fs.readFileSync(writeReport(files, path.join(dir, "r.html")).md, "utf8");
  const row = (metric: string) => md.split("\n").find((l) => l.startsWith(`| ${metric} |`))!.split(" | ").slice(1);
  assert.deepEqual(row("NLL (nats/token)"), [
    "2.0000",
    "4.0000 (x.txt, 500 tokens, ctx 256; another tokenizer 22222222 (32000 tokens); not comparable)",
    "2.5000 (x.txt (other content), 1000 tokens, ctx 256; not comparable)",
    "2.2500 (+0.2500)",
    "2.5000 (+0.5000; tokenizer not recorded) |",
  ]);
  assert.match(row("perplexity")[1]!, /another tokenizer 22222222 \(32000 tokens\); not comparable/);
  assert.deepEqual(row("bits / byte"), ["0.7000", "0.7200 (+0.0200)", "0.7000 (x.txt (other content), 4000 bytes, ctx 256; not comparable)", "0.7000 (+0.0000)", "– |"], "bits per byte: the same bytes, whatever the tokenizer");
  assert.match(md, /^- \*\*tok\*\*: .*; text x\.txt \(500 tokens, ctx 256, 4000 bytes\); tokenizer 22222222 \(32000 tokens\)$/m);
  assert.match(md, /^- \*\*old\*\*: .*; text x\.txt \(1000 tokens, ctx 256\); tokenizer not recorded$/m);
  // A tokenizer record the report cannot compare is refused by name.
  for (const [tokenizer, re] of [
    [{ hash: 5, vocab_size: 512 }, /"tokenizer\.hash" is a number, not a string/],
    [{ hash: "ab" }, /"tokenizer" has no "vocab_size"/],
    ["gpt2", /"tokenizer" is a string \("gpt2"\), not an object/],
  ] as const) {
    const f = path.join(dir, "bad.json");
    fs.writeFileSync(f, JSON.stringify({ ...base, tokenizer }));
    assert.throws(() => writeReport([files[0]!, f], path.join(dir, "bad.html")), (e: Error) => e instanceof MlaError && re.test(e.message), String(re));
  }
});

test("report's perplexity chart: runs the table marks not comparable (another tokenizer, text or ctx) get their own chart and scale, with a note; comparable runs share one chart", async () => {
  const { reportHtml, reportMarkdown } = await import("../../src/eval/report/report.js");
  const base = { model: "m", dir: "/m", config_hash: "x", attention: "mha", conversion: null, params: 1, kv_elems_per_token: 8, kv_bytes_per_token: 32, backend: "cpu", seconds: 1, text: "/t/x.txt", text_hash: "aaaa", tokens: 1000, ctx: 256 };
  const tokA = { hash: "1111111111111111", vocab_size: 512 };
  const tokB = { hash: "2222222222222222", vocab_size: 32000 };
  const runs = [
    { ...base, label: "small", ppl: 4, nll: 1.386, tokenizer: tokA },
    { ...base, label: "small-mla", ppl: 5, nll: 1.609, tokenizer: tokA },
    { ...base, label: "big", ppl: 60, nll: 4.094, tokenizer: tokB },
  ];
  const svgs = (html: string) => [...html.matchAll(/<svg[\s\S]*?<\/svg>/g)].map((m) => m[0]);
  const pplCharts = (html: string) => svgs(html).filter((s) => /aria-label="Perplexity/.test(s));
  const bars = (svg: string) => [...svg.matchAll(/<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" fill="(#[0-9a-f]+)"><title>([^<]*)<\/title>/g)].map((m) => ({ top: Number(m[1]), height: Number(m[2]), fill: m[3], title: m[4] }));

  const html = reportHtml(runs as never);
  const charts = pplCharts(html);
  assert.equal(charts.length, 2, "one chart per group of comparable runs");
  assert.match(charts[0]!, /aria-label="Perplexity \(lower is better\): x\.txt, 1000 tokens, ctx 256, tokenizer 11111111"/);
  assert.match(charts[1]!, /aria-label="Perplexity \(lower is better\): x\.txt, 1000 tokens, ctx 256, tokenizer 22222222"/);
  assert.deepEqual(bars(charts[0]!).map((b) => b.title), ["small · perplexity: 4.000", "small-mla · perplexity: 5.000"]);
  assert.deepEqual(bars(charts[1]!).map((b) => b.title), ["big · perplexity: 60.0"]);
  // Each on its own scale: big's 60 does not flatten the small model's bars.
  assert.ok(bars(charts[0]!)[1]!.height > 100, `small-mla's bar is ${bars(charts[0]!)[1]!.height} px tall`);
  // A run keeps its color across charts (the KV chart's, which holds every run).
  const kvChart = svgs(html).find((s) => /aria-label="KV cache/.test(s))!;
  assert.equal(bars(charts[1]!)[0]!.fill, bars(kvChart)[2]!.fill);
  assert.match(html, /<\/svg>\n<p class="note">Perplexity is charted in 2 groups, each on its own scale: runs in different charts were measured on another text, token count, ctx or tokenizer, so their perplexities are not comparable \(the table marks them\)/);
  // The table (both formats) still says so.
  assert.match(reportMarkdown(runs as never), /\| perplexity \| 4\.000 \| 5\.000 \(\+25\.00%\) \| 60\.000 \(another tokenizer 22222222 \(32000 tokens\); not comparable\) \|/);

  // Comparable runs: one chart, every run, no note.
  const same = reportHtml(runs.slice(0, 2) as never);
  assert.equal(pplCharts(same).length, 1);
  assert.match(pplCharts(same)[0]!, /aria-label="Perplexity \(lower is better\)"/);
  assert.equal(bars(pplCharts(same)[0]!).length, 2);
  assert.doesNotMatch(same, /class="note"/);

  // Two texts of one name (other content) and another ctx: three groups, the two of one basis told apart.
  const texts = reportHtml([runs[0], { ...runs[1], text_hash: "bbbb" }, { ...runs[1], label: "ctx64", ctx: 64 }] as never);
  const titles = pplCharts(texts).map((s) => /aria-label="([^"]*)"/.exec(s)![1]);
  assert.deepEqual(titles, [
    "Perplexity (lower is better): x.txt, 1000 tokens, ctx 256, tokenizer 11111111 (group 1)",
    "Perplexity (lower is better): x.txt, 1000 tokens, ctx 256, tokenizer 11111111 (group 2)",
    "Perplexity (lower is better): x.txt, 1000 tokens, ctx 64, tokenizer 11111111",
  ]);
  assert.match(texts, /Perplexity is charted in 3 groups/);
});

test("report's accuracy chart: a run that scored another number of a task's items gets a note under the chart", async () => {
  const { reportHtml } = await import("../../src/eval/report/report.js");
  const base = { model: "m", dir: "/m", config_hash: "x", attention: "mha", conversion: null, params: 1, kv_elems_per_token: 8, kv_bytes_per_token: 32, backend: "cpu", seconds: 1 };
  const runs = [
    { ...base, label: "full", tasks: { piqa: { n: 100, acc: 0.6, acc_stderr: 0.05 }, "arc-easy": { n: 50, acc: 0.5, acc_stderr: 0.07 } } },
    { ...base, label: "same", tasks: { piqa: { n: 100, acc: 0.55, acc_stderr: 0.05 }, "arc-easy": { n: 50, acc: 0.45, acc_stderr: 0.07 } } },
    { ...base, label: "limited", tasks: { piqa: { n: 10, acc: 0.9, acc_stderr: 0.1 }, "arc-easy": { n: 50, acc: 0.4, acc_stderr: 0.07 } } },
  ];
  assert.match(reportHtml(runs as never), /<p class="note">Not comparable with the first run's bars, scored on other items: piqa: limited \(10 items\) against 100 for full\.<\/p>/);
  assert.doesNotMatch(reportHtml(runs.slice(0, 2) as never), /scored on other items/);
});

test("a chart's legend wraps into rows that fit its width (a 480-px chart cut a third run's name off)", async () => {
  const { barChart } = await import("../../src/eval/report/charts.js");
  const legendAt = (svg: string) => [...svg.matchAll(/<rect x="(\d+)" y="(\d+)" width="12" height="12"/g)].map((m) => [Number(m[1]), Number(m[2])]);
  const three = barChart("KV", ["kv"], ["a", "b", "c"], [[1], [2], [3]], { width: 480 });
  assert.deepEqual(legendAt(three), [[64, 278], [234, 278], [64, 296]]);
  assert.match(three, /^<svg [^>]*height="318"/);
  const wide = barChart("KV", ["kv"], ["a", "b", "c"], [[1], [2], [3]], { width: 720 });
  assert.deepEqual(legendAt(wide), [[64, 278], [234, 278], [404, 278]]);
  assert.match(wide, /^<svg [^>]*height="300"/);
});

test("a report --out whose extension names another format (.json, .txt) is refused before anything is written; .html, .htm, .md and no extension are taken", () => {
  const dir = tmpDir();
  const json = path.join(dir, "run.json");
  fs.writeFileSync(json, "{}");
  for (const ext of ["json", "txt"]) {
    const out = path.join(dir, `y.${ext}`);
    assert.throws(() => writeReport([json], out), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`^--out \\S+y\\.${ext}: a report is HTML with a Markdown twin, not \\.${ext}\\n  hint: name it \\.html`).test(e.message));
    assert.ok(!fs.existsSync(out) && !fs.existsSync(`${out}.md`));
  }
  const cli = spawnSync(process.execPath, [path.join(ROOT, "dist", "src", "cli", "main.js"), "report", json, "--out", path.join(dir, "y.json")], { encoding: "utf8" });
  assert.equal(cli.status, 1);
  assert.match(cli.stderr, /^error: --out \S+y\.json: a report is HTML with a Markdown twin, not \.json/);
});

test("report --out /dev/null or a pipe (or a twin that is one) is refused before anything is written, --force or not: nothing written into the device, no /dev/null.md made beside it (--force made one as root)", { skip: process.platform === "win32" ? "no /dev/null nor mkfifo" : false }, () => {
  const dir = tmpDir();
  const json = path.join(dir, "run.json");
  fs.writeFileSync(json, "{}"); // not an eval result: reaching it would be refused otherwise
  const fifo = path.join(dir, "pipe.md");
  execFileSync("mkfifo", [fifo]);
  const hint = 'pass a file path, e.g. --out report.html; to build a report without keeping it, write it into a temporary folder (--out "$(mktemp -d)/report.html")';
  const cases: [string, string][] = [
    ["/dev/null", `--out /dev/null is a character device, not a file: a report is two files, the HTML and its Markdown twin beside it (/dev/null.md)\n  hint: ${hint}`],
    [fifo, `--out ${fifo} is a named pipe (FIFO), not a file: a report is two files, the Markdown and its HTML twin beside it (${path.join(dir, "pipe.html")})\n  hint: ${hint}`],
    [path.join(dir, "pipe.html"), `--out ${path.join(dir, "pipe.html")}: its Markdown twin ${fifo} is a named pipe (FIFO), not a file\n  hint: choose another --out, whose twin (the same name, .md) is a file or nothing yet`],
  ];
  for (const [out, message] of cases) {
    for (const force of [false, true]) assert.throws(() => writeReport([json], out, { force }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && e.message === message);
    const cli = spawnSync(process.execPath, [path.join(ROOT, "dist", "src", "cli", "main.js"), "report", json, "--out", out, "--force"], { encoding: "utf8", timeout: 20000 });
    assert.equal(cli.status, 1, cli.stderr);
    assert.equal(cli.stderr, `error: ${message}\n`);
  }
  assert.ok(!fs.existsSync("/dev/null.md") && fs.statSync("/dev/null").isCharacterDevice() && fs.statSync(fifo).isFIFO());
  assert.deepEqual(fs.readdirSync(dir).sort(), ["pipe.md", "run.json"]);
});
