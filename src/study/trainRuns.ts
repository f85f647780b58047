/**
 * A study's runs, one after another, each from the same MHA initialization: converted, trained,
 * measured, and its row written (NAME.row.json), so that a run already finished is skipped and one
 * interrupted resumes from its last checkpoint when the same call is made again.
 */
import fs from "node:fs";
import path from "node:path";
import { convert } from "../convert/pipeline.js";
import { finetune } from "../finetune/trainer.js";
import { recoverInterruptedSave } from "../finetune/checkpoint.js";
import { inspectModel } from "../eval/inspect.js";
import { isXzFile } from "../io/text.js";
import { writeFileAtomic } from "../io/atomicDir.js";
import { resumableStep } from "../util/abort.js";
import { initFromScratch } from "./init.js";
import { decodeSpeed } from "./decodeSpeed.js";
import { readStudyRow } from "./studyFiles.js";
import { runName, runSettings, type StudyVariant } from "./runs.js";
import type { CheckedStudy } from "./options.js";
import type { StudyOptions, StudyRow } from "./study.js";

/**
 * Without --save-every, each run saves a checkpoint after every this many minutes of training: a hard
 * kill (kill -9, a lost GPU lease or machine) then loses at most that much, where it lost the whole run
 * under way. By time, not steps: what a checkpoint costs in steps depends on the hardware, not on the
 * model (12 bytes per parameter written, against ~6·params·batch·seq FLOPs a step). Estimated from the
 * 20M-token study (415k tokens/s on an H200, docs/benchmarks.md) and ~1 GB/s of disk, one costs about
 * 30 steps of the default shape there, and a fraction of a step on a CPU: no step count both bounds the
 * work lost and keeps the saves cheap on both. Every 10 minutes, a study-sized model's checkpoint (26M
 * parameters: 0.3 GB) is well under 1% of the run; a run shorter than that saves none but its final
 * one, and loses less than 10 minutes.
 */
export const STUDY_SAVE_MINUTES = 10;

/**
 * The --data path the runs train on. An .xz file is passed as it is: finetune decompresses it in
 * memory and the token cache (OUT/tokens) keeps its tokens, so only the first run decompresses it and
 * no decompressed copy is written. A study begun before finetune took .xz decompressed it into OUT,
 * and its runs' checkpoints name that copy (a resumed run must train on the same path): there, it is
 * still used.
 */
function trainingText(data: string, out: string): string {
  if (!isXzFile(data)) return data;
  const copy = path.join(out, path.basename(data, ".xz"));
  return fs.existsSync(copy) && fs.statSync(copy).isFile() ? copy : data;
}

/** The rows of this call's runs in order; stoppedEarly when shouldStop stopped one (saved, to resume), whose row is then not among them. */
export async function trainRuns(o: StudyOptions, { log, like, c, runs, seq, batch, lr, seed, valFraction, device }: CheckedStudy): Promise<{ rows: StudyRow[]; stoppedEarly: boolean }> {
  const data = trainingText(o.data, o.out);
  const init = path.join(o.out, "init-mha");
  if (!fs.existsSync(init)) {
    // Built aside and renamed, so an interrupted initialization is never mistaken for a finished one.
    fs.rmSync(init + ".part", { recursive: true, force: true });
    initFromScratch(like, init + ".part", seed);
    fs.renameSync(init + ".part", init);
  }
  // Only the default --eval-every reads it. Floored where the trainer rounds up (stepsFor): kept so that a
  // study resumed across versions validates its new runs at its finished runs' steps (the claims compare
  // rows at shared steps). Harmless: where the two differ (tokens not whole steps) the interval is at most
  // one step shorter, never 0 nor past the run (the trainer validates below its last step, then at it), and
  // a run of 8 steps or more still gets 3 points in its last quarter (claims.ts).
  const steps = Math.max(1, Math.floor(o.tokens / (seq * batch)));
  // Not a setting of the study (a later sitting may save more or less often): the same steps either way.
  const saving = o.saveEvery == null ? { saveEveryMinutes: STUDY_SAVE_MINUTES } : { saveEvery: o.saveEvery };
  log.info(`training checkpoints: ${o.saveEvery == null ? `after every ${STUDY_SAVE_MINUTES} minutes of training (--save-every N: every N steps)` : o.saveEvery === 0 ? "only when a run is stopped (Ctrl-C), not periodically: a hard kill restarts the run under way" : `every ${o.saveEvery} steps`}; re-running the same command continues a run from its last one`);
  const rows: StudyRow[] = [];
  const resumes = `the finished runs are kept in ${o.out} (and an interrupted training run's last checkpoint); call study() again with the same options to resume`;
  for (const [i, r] of runs.entries()) {
    const name = runName(r);
    const rowFile = path.join(o.out, `${name}.row.json`);
    if (fs.existsSync(rowFile)) {
      log.info(`study ${i + 1}/${runs.length}: ${name} already done`);
      rows.push(readStudyRow(rowFile, name));
      continue;
    }
    log.info(`study ${i + 1}/${runs.length}: ${name}`);
    const conversion = r.variant === "mha" ? null : runSettings(r, c, o.gateDim ?? undefined);
    const modelDir = conversion ? path.join(o.out, name) : init;
    const trained = path.join(o.out, `${name}-trained`);
    const ft = await resumableStep(o.signal, resumes, async () => {
      // The conversion's per-layer lines go to the study's progress sink, as its training's and measurement's do.
      if (conversion && !fs.existsSync(path.join(modelDir, "config.json"))) await convert(init, { ...conversion, device, out: modelDir, force: true, progress: o.progress, logger: log, signal: o.signal });
      // A run killed while saving (kill -9, a lost machine) may have left its last whole checkpoint moved
      // aside (checkpoint.old): put back first, so the run resumes from it rather than starting over.
      if (fs.existsSync(trained)) recoverInterruptedSave(trained);
      const resume = fs.existsSync(path.join(trained, "checkpoint", "state.json"));
      return finetune(modelDir, { data: [data], out: trained, force: !resume, resume, tokens: o.tokens, seq, batch, lr, seed, valFraction, tokenCache: path.join(o.out, "tokens"), evalEvery: o.evalEvery ?? Math.max(1, Math.round(steps / 20)), ...saving, device, progress: o.progress, logger: log, shouldStop: o.shouldStop, signal: o.signal });
    });
    if (ft.stoppedEarly) return { rows, stoppedEarly: true };
    // The measurement stops on the signal too; the trained run is whole by then (finetune.json), so the
    // same call resumes by measuring it again: its fine-tune finds the run finished and trains nothing.
    const decodeTokensPerS = await resumableStep(o.signal, resumes, () => decodeSpeed(ft.out, device, { progress: o.progress, signal: o.signal }));
    const curve = fs.readFileSync(path.join(ft.out, "train_log.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number; val_nll?: number }).filter((l) => l.val_nll !== undefined).map((l) => [l.step, l.val_nll!] as [number, number]);
    const info = inspectModel(ft.out);
    const kv = info.kv_elems_per_token;
    const row: StudyRow = {
      variant: r.variant,
      label: r.L === null ? "MHA" : `${{ mla: "MLA", "mla-rope": "MLA + RoPE", "eg-mla": "EG-MLA" }[r.variant as Exclude<StudyVariant, "mha">]}, latent ${r.L}`,
      latentDim: r.L,
      ropePairs: conversion?.ropePairs ?? null,
      params: info.params,
      kvElemsPerToken: kv,
      kvBytesPerTokenBf16: kv * 2,
      valNll: ft.valNllAfter ?? NaN,
      curve,
      trainTokensPerS: ft.tokensPerSecond,
      decodeTokensPerS,
    };
    writeFileAtomic(rowFile, JSON.stringify(row, null, 2) + "\n");
    rows.push(row);
  }
  return { rows, stoppedEarly: false };
}
