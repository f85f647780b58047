/**
 * finetune()'s onStep and onValidation: called with the numbers of the run's log lines, in order; a
 * callback that throws stops the run as a stop at that point does (the step's checkpoint, from which
 * `resume: true` goes on; before training nothing is left), and finetune() rejects with its error.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { finetune, type FinetuneOptions } from "../../src/finetune/trainer.js";
import type { FinetuneStep, FinetuneValidation } from "../../src/finetune/events.js";
import { readCheckpointState } from "../../src/finetune/checkpoint.js";
import { LOG_FILE, SUMMARY_FILE } from "../../src/finetune/resume.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, tmpDir } from "../helpers.js";

const MODEL = path.join(MODELS, "stories260K");
const DATA = path.join(FIXTURES, "text", "tinystories_25k.txt");
const PER_STEP = 4 * 32;
/** 4 steps of 4 sequences of 32 tokens, a validation every 2. */
const common: FinetuneOptions = { data: [DATA], out: "", tokens: 4 * PER_STEP, seq: 32, batch: 4, valFraction: 0.05, evalEvery: 2, progress: null };

function logRows(out: string): Record<string, number>[] {
  return fs.readFileSync(path.join(out, LOG_FILE), "utf8").trimEnd().split("\n").map((l) => JSON.parse(l) as Record<string, number>);
}

test("onStep hears every step and onValidation every validation, with the log's numbers", async () => {
  const out = path.join(tmpDir(), "ft");
  const steps: FinetuneStep[] = [];
  const vals: FinetuneValidation[] = [];
  const order: string[] = [];
  const r = await finetune(MODEL, {
    ...common,
    out,
    onStep: (s) => void (steps.push(s), order.push(`step ${s.step}`)),
    // A promise is waited for.
    onValidation: async (v) => {
      await new Promise((done) => setTimeout(done, 1));
      vals.push(v);
      order.push(`${v.when} ${v.step}`);
    },
  });
  assert.deepEqual(order, ["before 0", "step 1", "step 2", "periodic 2", "step 3", "step 4", "final 4"]);
  const rows = logRows(out);
  const stepRows = rows.filter((row) => row["loss"] !== undefined);
  assert.equal(steps.length, 4);
  steps.forEach((s, i) => {
    const row = stepRows[i]!;
    assert.deepEqual(s, { step: i + 1, steps: 4, tokens: (i + 1) * PER_STEP, loss: row["loss"], lr: row["lr"], gradNorm: row["grad_norm"], tokensPerSecond: row["tokens_per_s"], elapsedSeconds: row["elapsed_s"] });
    assert.ok(Number.isFinite(s.loss) && s.loss > 0 && s.tokensPerSecond > 0);
  });
  const valRows = rows.filter((row) => row["val_nll"] !== undefined);
  assert.deepEqual(vals.map((v) => [v.step, v.steps, v.valNll]), valRows.map((row) => [row["step"], 4, row["val_nll"]]));
  assert.equal(vals[0]!.valNll, r.valNllBefore);
  assert.equal(vals[2]!.valNll, r.valNllAfter);
});

test("an onStep that throws stops the run after that step: its checkpoint, no model, the error rethrown; resume goes on", async () => {
  const out = path.join(tmpDir(), "ft");
  const lines: string[] = [];
  const boom = new Error("enough");
  await assert.rejects(
    finetune(MODEL, {
      ...common,
      out,
      logger: { info: (m) => lines.push(m), warn: (m) => lines.push(m) },
      onStep: (s) => {
        if (s.step === 2) throw boom;
      },
    }),
    (e) => e === boom,
  );
  assert.equal(readCheckpointState(out).step, 2);
  assert.ok(!fs.existsSync(path.join(out, SUMMARY_FILE)), "no finished run");
  assert.ok(!fs.existsSync(path.join(out, "config.json")), "no model written");
  // The periodic validation after step 2 did not run (the resumed run does it first).
  assert.deepEqual(logRows(out).map((row) => [row["step"], row["val_nll"] === undefined ? "loss" : "val"]), [[0, "val"], [1, "loss"], [2, "loss"]]);
  assert.ok(lines.some((l) => /stopped at step 2\/4, its onStep callback threw; the step-2 checkpoint is kept/.test(l)), lines.join("\n"));

  const resumed: number[] = [];
  const vals: string[] = [];
  const r = await finetune(MODEL, { ...common, out, resume: true, onStep: (s) => void resumed.push(s.step), onValidation: (v) => void vals.push(`${v.when} ${v.step}`) });
  assert.deepEqual(resumed, [3, 4]);
  assert.deepEqual(vals, ["periodic 2", "final 4"]);
  assert.equal(r.steps, 4);
  assert.equal(r.stoppedEarly, false);
});

test("an onValidation that throws before training leaves nothing; after the final validation, the last checkpoint and no model", async () => {
  const parent = tmpDir();
  const out = path.join(parent, "ft");
  const boom = new Error("no");
  await assert.rejects(finetune(MODEL, { ...common, out, onValidation: () => { throw boom; } }), (e) => e === boom);
  assert.deepEqual(fs.readdirSync(parent), [], "no --out left");

  await assert.rejects(finetune(MODEL, { ...common, out, onValidation: (v) => { if (v.when === "final") throw boom; } }), (e) => e === boom);
  assert.equal(readCheckpointState(out).step, 4);
  assert.ok(!fs.existsSync(path.join(out, SUMMARY_FILE)));
  assert.ok(!fs.existsSync(path.join(out, "config.json")), "no model written");
  const r = await finetune(MODEL, { ...common, out, resume: true });
  assert.equal(r.steps, 4);
  assert.ok(fs.existsSync(path.join(out, SUMMARY_FILE)));
});

test("onStep and onValidation must be functions", async () => {
  const out = path.join(tmpDir(), "ft");
  for (const key of ["onStep", "onValidation"]) {
    await assert.rejects(finetune(MODEL, { ...common, out, [key]: "log" } as FinetuneOptions), (e) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`option ${key} is "log" \\(a string\\), not a function`).test(e.message));
  }
  assert.ok(!fs.existsSync(out));
});
