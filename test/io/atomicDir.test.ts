import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { abandonOutDir, beginOutDir, commitOutDir, copyFileFresh, refuseExisting, refuseFileAsOutDir, refuseForeignFolder } from "../../src/io/atomicDir.js";
import { MlaError } from "../../src/errors.js";
import { tmpDir } from "../helpers.js";

/** A pid that is certainly dead: a child that has exited and been reaped. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((r) => child.on("exit", r));
  return child.pid!;
}

test("sweepStale keeps a live run's temporary folder and removes a dead run's, an unstamped one's and an empty-owner-file one's", async () => {
  const parent = tmpDir();
  const out = path.join(parent, "out");
  const sleeper = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
  try {
    const liveOther = path.join(parent, `.out.tmp-${sleeper.pid}-aaaaaa`);
    const dead = path.join(parent, `.out.tmp-${await deadPid()}-bbbbbb`);
    // Folders of earlier versions: a random suffix and the owner in a file, which a run killed between
    // creating it and writing it left empty (read once as pid 0, which kill(0, 0) calls alive).
    const legacyEmpty = path.join(parent, ".out.tmp-Cc9dEf");
    const legacyNone = path.join(parent, ".out.tmp-GgHhIi");
    const legacyLive = path.join(parent, ".out.tmp-JjKkLl");
    const ownOld = path.join(parent, `.out.tmp-${process.pid}-cccccc`);
    const unrelated = path.join(parent, ".other.tmp-1-dddddd");
    for (const d of [liveOther, dead, legacyEmpty, legacyNone, legacyLive, ownOld, unrelated]) fs.mkdirSync(d);
    fs.writeFileSync(path.join(legacyEmpty, ".mha2mla-owner"), "");
    fs.writeFileSync(path.join(legacyLive, ".mha2mla-owner"), String(sleeper.pid));
    const mine = beginOutDir(out, false);
    assert.match(path.basename(mine), new RegExp(`^\\.out\\.tmp-${process.pid}-`), "the owner's pid is in the name from the start");
    const second = beginOutDir(out, false);
    assert.deepEqual(
      fs.readdirSync(parent).sort(),
      [path.basename(mine), path.basename(second), path.basename(liveOther), path.basename(legacyLive), path.basename(unrelated)].sort(),
      "a live run's folders (another process's, this one's) and other outputs' stay",
    );
    abandonOutDir(mine);
    abandonOutDir(second);
  } finally {
    sleeper.kill("SIGKILL");
    fs.rmSync(parent, { recursive: true, force: true });
  }
});

test("an output folder gets the mode mkdir gives (mkdtemp's 0700 kept other users from the model); copied side files the mode of a new file", () => {
  const parent = tmpDir();
  const mask = process.umask();
  const tmp = beginOutDir(path.join(parent, "out"), false);
  assert.equal(fs.statSync(tmp).mode & 0o777, 0o777 & ~mask);
  abandonOutDir(tmp);
  const src = path.join(parent, "tokenizer.json");
  fs.writeFileSync(src, "{}");
  fs.chmodSync(src, 0o444);
  copyFileFresh(src, path.join(parent, "copy.json"));
  assert.equal(fs.statSync(path.join(parent, "copy.json")).mode & 0o777, 0o666 & ~mask);
});

test("--force never replaces a folder of other files (no config.json): refused naming what it holds, the files kept; an empty folder or an earlier model output is replaced", () => {
  const parent = tmpDir();
  const mine = path.join(parent, "models");
  fs.mkdirSync(path.join(mine, "llama"), { recursive: true });
  fs.writeFileSync(path.join(mine, "notes.txt"), "important\n");
  for (const f of [() => beginOutDir(mine, true), () => refuseExisting(mine, true)])
    assert.throws(f, (e: unknown) => e instanceof MlaError && e.code === "EXISTS" && /^--out \S*models is a folder that holds no model this tool wrote \(no mla_conversion\.json; a config\.json without synth's or a conversion's mark\): it holds (llama, notes\.txt|notes\.txt, llama), and --force replaces only an earlier output\n  hint: choose a new folder's name for --out \(e\.g\. \S*models\/NAME\), or empty that folder first/.test(e.message));
  assert.equal(fs.readFileSync(path.join(mine, "notes.txt"), "utf8"), "important\n");
  assert.deepEqual(fs.readdirSync(parent), ["models"], "nothing written beside it");
  // Other kinds of output name their own marks (a fine-tuning run, a pipeline, a study).
  assert.throws(() => refuseForeignFolder(mine, true, ["pipeline.json"], "pipeline run (no pipeline.json)"), /holds no pipeline run \(no pipeline\.json\)/);
  assert.doesNotThrow(() => refuseForeignFolder(mine, false, ["pipeline.json"], "pipeline run"), "without --force the usual refusal of an existing --out applies");
  const empty = path.join(parent, "empty");
  fs.mkdirSync(empty);
  const t = beginOutDir(empty, true);
  fs.writeFileSync(path.join(t, "config.json"), "{}");
  fs.writeFileSync(path.join(t, "mla_conversion.json"), "{}");
  commitOutDir(t, empty, true);
  const t2 = beginOutDir(empty, true); // now an earlier output
  commitOutDir(t2, empty, true);
  assert.deepEqual(fs.readdirSync(empty), []);
});

test("--force never replaces a pretrained model's folder (a config.json without this tool's marks), nor suggests emptying it; synth's checkpoints and conversions are earlier outputs", () => {
  const parent = tmpDir();
  const original = path.join(parent, "original");
  fs.mkdirSync(original);
  fs.writeFileSync(path.join(original, "config.json"), '{"model_type": "llama"}');
  fs.writeFileSync(path.join(original, "model.safetensors"), "weights");
  assert.throws(() => refuseExisting(original, true), (e: unknown) => e instanceof MlaError && /holds no model this tool wrote[^]*hint: choose a new folder's name for --out \(e\.g\. \S*\/original-NAME\)$/.test(e.message), "a name beside the model's folder, not inside it");
  assert.equal(fs.readFileSync(path.join(original, "model.safetensors"), "utf8"), "weights");
  for (const [file, text] of [["config.json", '{"_synth": {"arch": "llama2-7b"}}'], ["config.json", '{"mha2mla": {}}'], ["mla_conversion.json", "{}"]]) {
    const dir = fs.mkdtempSync(path.join(parent, "ours-"));
    fs.writeFileSync(path.join(dir, "model.safetensors"), "w");
    fs.writeFileSync(path.join(dir, file), text);
    assert.doesNotThrow(() => refuseExisting(dir, true), `${file} ${text}`);
  }
});

test("--force replaces an earlier output folder, never a file (or a link to one) at --out: refused naming it, the file kept", () => {
  const parent = tmpDir();
  const file = path.join(parent, "f.txt");
  fs.writeFileSync(file, "hi\n");
  const link = path.join(parent, "link");
  fs.symlinkSync(file, link);
  const isFile = (name: string) => (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`^--out \\S*${name} is a file, not a folder\n  hint: --out names the output folder, and --force replaces only an earlier output folder`).test(e.message);
  for (const out of [file, link]) {
    for (const force of [false, true]) assert.throws(() => beginOutDir(out, force), isFile(path.basename(out)));
    assert.throws(() => refuseFileAsOutDir(out), isFile(path.basename(out)));
  }
  // A file put there while the work ran is refused at the rename too.
  const out = path.join(parent, "late");
  const tmp = beginOutDir(out, true);
  fs.writeFileSync(out, "late\n");
  assert.throws(() => commitOutDir(tmp, out, true), isFile("late"));
  abandonOutDir(tmp);
  assert.equal(fs.readFileSync(file, "utf8"), "hi\n");
  assert.equal(fs.readFileSync(out, "utf8"), "late\n");
  assert.deepEqual(fs.readdirSync(parent).sort(), ["f.txt", "late", "link"]);
  // A folder is replaced with --force, as before; a dangling link or nothing is no obstacle.
  const dir = path.join(parent, "d");
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "mla_conversion.json"), "{}"); // an earlier output: a conversion
  const t2 = beginOutDir(dir, true);
  fs.writeFileSync(path.join(t2, "new"), "");
  commitOutDir(t2, dir, true);
  assert.deepEqual(fs.readdirSync(dir), ["new"]);
  fs.symlinkSync(path.join(parent, "gone"), path.join(parent, "dangling"));
  refuseFileAsOutDir(path.join(parent, "dangling"));
  refuseFileAsOutDir(path.join(parent, "absent"));
  // A file used as a folder before a `..` (which path.resolve would drop with it), or through a link to it.
  for (const through of [file, link])
    assert.throws(() => refuseFileAsOutDir(`${through}${path.sep}..${path.sep}model`), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && e.message.startsWith(`--out ${through}${path.sep}..${path.sep}model: ${through} is a file, not a folder`));
  // The file itself with a trailing separator: named as the output, with the caller's hint.
  assert.throws(() => refuseFileAsOutDir(`${file}${path.sep}`, { flag: "--token-cache", hint: "a folder, please" }), (e: unknown) => e instanceof MlaError && e.message === `--token-cache ${file}${path.sep} is a file, not a folder\n  hint: a folder, please`);
});

test("an output folder at a device or a pipe (--out /dev/null) is refused naming what it is, not as a file to move away; the device stays as it was", { skip: process.platform === "win32" ? "no /dev/null nor mkfifo" : false }, () => {
  const fifo = path.join(tmpDir(), "pipe");
  execFileSync("mkfifo", [fifo]);
  for (const [out, kind] of [["/dev/null", "a character device"], [fifo, "a named pipe \\(FIFO\\)"]] as const)
    for (const check of [() => refuseFileAsOutDir(out), () => refuseExisting(out, true), () => beginOutDir(out, true)])
      assert.throws(check, (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`^--out ${out} is ${kind}, not a folder\\n  hint: --out names a folder to write \\(it is made if missing\\): choose a folder path`).test(e.message) && !/move the file away/.test(e.message));
  assert.ok(fs.statSync("/dev/null").isCharacterDevice() && fs.statSync(fifo).isFIFO());
  assert.ok(!fs.readdirSync("/dev").some((f) => f.startsWith(".null.tmp-")), "no temporary folder beside /dev/null");
});
