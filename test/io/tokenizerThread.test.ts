/**
 * TokenizerThread's end() while an answer is in flight: the answer, posted before the worker was told to stop
 * and delivered after, must not unref the exiting worker, or a caller awaiting end() sees the event loop end
 * first (a stopped encodeLong with two workers was cancelled in CI this way, 3 runs in 210).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MODELS, tmpDir } from "../helpers.js";

test("end() with an answer posted but not yet delivered settles: the exiting worker keeps the event loop alive until it exits", () => {
  const at = JSON.stringify(new URL("../../src/io/tokenizerThread.js", import.meta.url).href);
  const script = `
    import { TokenizerThread } from ${at};
    const t = new TokenizerThread(${JSON.stringify(path.join(MODELS, "stories260K"))}, undefined);
    const pieces = [{ text: "Once upon a time ".repeat(50), cont: false }];
    await t.ask({ kind: "pieces", pieces });
    const second = t.ask({ kind: "pieces", pieces });
    const until = Date.now() + 300;
    while (Date.now() < until) {} // the worker answers meanwhile; the answer waits in the port
    await t.end("stopped");
    console.log(JSON.stringify({ settled: true, second: (await second).ok }));
  `;
  // A file, not -e: node -e ends the process when the script is done, whatever is pending.
  const file = path.join(tmpDir(), "end.mjs");
  fs.writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.status, 0, `exit ${r.status} (13: the event loop ended with end() pending)\n${r.stderr}`);
  assert.deepEqual(JSON.parse(r.stdout), { settled: true, second: false }, "the ended request gets no answer");
});
