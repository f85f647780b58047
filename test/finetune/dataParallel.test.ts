/**
 * Data-parallel fine-tuning (finetune's `collective`; `finetune --gpus N` on GPUs) on the CPU, with
 * ranks in one process (localGroup): two ranks that each train half of every micro-batch take the same
 * steps as one process with the whole batch; rank 0 alone writes the run folder; a stop asked of one
 * rank stops both after the same step, and the checkpoint resumes on one rank, ending where one
 * process would have.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import { rankRows, rankWindows } from "../../src/finetune/collective.js";
import { LOG_FILE } from "../../src/finetune/resume.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";
import { localGroup } from "./localGroup.js";

const MODEL = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
/** 4 steps of 4 sequences of 32 tokens, 2 micro-batches a step; a validation every 2 steps. */
const common: FinetuneOptions = { data: [DATA], out: "", tokens: 4 * 2 * 4 * 32, seq: 32, batch: 4, accum: 2, valFraction: 0.05, evalEvery: 2, progress: null, device: "cpu" };

const losses = (out: string) =>
  fs.readFileSync(path.join(out, LOG_FILE), "utf8").trimEnd().split("\n").map((l) => JSON.parse(l) as Record<string, number>).filter((r) => r["loss"] !== undefined).map((r) => r["loss"]!);

function weights(dir: string): Map<string, Float32Array> {
  const ck = Checkpoint.open(dir);
  try {
    return new Map(
      ck.names().map((n) => {
        const bytes = ck.readBytes(n);
        if (ck.entry(n).dtype === "F32") return [n, new Float32Array(bytes.slice().buffer)];
        // bf16: the high half of a float32
        const u16 = new Uint16Array(bytes.slice().buffer);
        return [n, new Float32Array(Uint32Array.from(u16, (h) => h << 16).buffer)];
      }),
    );
  } finally {
    ck.close();
  }
}

function assertClose(a: readonly number[], b: readonly number[], tol: number, what: string) {
  assert.equal(a.length, b.length, what);
  a.forEach((x, i) => assert.ok(Math.abs(x - b[i]!) <= tol * Math.max(1, Math.abs(x)), `${what} ${i}: ${x} vs ${b[i]}`));
}

test("rankRows gives each rank its rows of a micro-batch", () => {
  const mb = { inputs: Int32Array.from({ length: 12 }, (_, i) => i), targets: Int32Array.from({ length: 12 }, (_, i) => 100 + i), sequences: 4 };
  const parts = [0, 1].map((r) => rankRows(mb, r, 2));
  assert.deepEqual([...parts[0]!.inputs], [0, 1, 2, 3, 4, 5]);
  assert.deepEqual([...parts[1]!.targets], [106, 107, 108, 109, 110, 111]);
  assert.equal(parts[1]!.sequences, 2);
  assert.equal(rankRows(mb, 0, 1), mb);
});

test("rankWindows splits a text's scoring windows among the ranks, in order and whole", () => {
  const ids = Int32Array.from({ length: 10 }, (_, i) => i);
  const parts = [0, 1, 2].map((r) => [...rankWindows(ids, 3, r, 3)]);
  assert.deepEqual(parts, [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]);
  assert.deepEqual([0, 1, 2, 3, 4].map((r) => rankWindows(ids, 8, r, 5).length), [0, 0, 8, 0, 2]);
});

test("two ranks with half a micro-batch each train as one process with all of it; rank 0 alone writes", async () => {
  const dir = tmpDir();
  const one = await finetune(MODEL, { ...common, out: path.join(dir, "one") });
  const outDp = path.join(dir, "dp");
  const [r0, r1] = await Promise.all(localGroup(2).map((collective) => finetune(MODEL, { ...common, out: outDp, collective })));
  assert.equal(r0!.steps, 4);
  assert.equal(r1!.steps, 4);
  assertClose(losses(outDp), losses(path.join(dir, "one")), 1e-5, "step loss");
  assertClose([r0!.valNllAfter!, r1!.valNllAfter!], [one.valNllAfter!, one.valNllAfter!], 1e-5, "validation NLL after");
  // One log line per step and validation (none doubled by the second rank), and the same files.
  assert.deepEqual(fs.readdirSync(outDp).sort(), fs.readdirSync(path.join(dir, "one")).sort());
  assert.equal(fs.readFileSync(path.join(outDp, LOG_FILE), "utf8").trimEnd().split("\n").length, fs.readFileSync(path.join(dir, "one", LOG_FILE), "utf8").trimEnd().split("\n").length);
  const [a, b] = [weights(path.join(dir, "one")), weights(outDp)];
  for (const [name, w] of a) assertClose([...w.subarray(0, 64)], [...b.get(name)!.subarray(0, 64)], 1e-4, name);
});

test("a stop asked of one rank stops both after the same step; the checkpoint resumes on one rank", async () => {
  const dir = tmpDir();
  await finetune(MODEL, { ...common, out: path.join(dir, "one") });
  const out = path.join(dir, "dp");
  let stepsOfRank1 = 0;
  const group = localGroup(2);
  const [r0, r1] = await Promise.all([
    finetune(MODEL, { ...common, out, collective: group[0]! }),
    finetune(MODEL, { ...common, out, collective: group[1]!, onStep: () => void stepsOfRank1++, shouldStop: () => stepsOfRank1 >= 1 }),
  ]);
  // Rank 1 asks during step 2 (after step 1's callback): both end after step 2, rank 0 with the checkpoint.
  assert.deepEqual([r0!.stoppedEarly, r0!.steps, r0!.checkpointStep], [true, 2, 2]);
  assert.deepEqual([r1!.stoppedEarly, r1!.steps], [true, 2]);
  const resumed = await finetune(MODEL, { ...common, out, resume: true });
  assert.equal(resumed.steps, 4);
  assertClose(losses(out), losses(path.join(dir, "one")), 1e-5, "step loss");
});

test("a --batch the ranks cannot split is refused before any work", async () => {
  const out = path.join(tmpDir(), "dp");
  await assert.rejects(finetune(MODEL, { ...common, out, batch: 3, collective: localGroup(2)[0]! }), (e: MlaError) => e.code === "BAD_ARGUMENT" && /--batch 3 does not split over 2 GPUs/.test(e.message));
  assert.equal(fs.existsSync(out), false);
});
