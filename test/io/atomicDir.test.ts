import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { abandonOutDir, beginOutDir, copyFileFresh } from "../../src/io/atomicDir.js";
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
