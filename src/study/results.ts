/**
 * The study's results once every run is done: the rows of this call's runs with those finished by
 * earlier calls, the claims checked against them, and study.json, report.md and report.html written
 * from them. Apart from the runs, since a call stopped early writes none of it.
 */
import fs from "node:fs";
import path from "node:path";
import { stepsFor } from "../finetune/trainer.js";
import { selectBackend } from "../backends/select.js";
import { writeFileAtomic } from "../io/atomicDir.js";
import { studyHtml, studyMarkdown } from "./report.js";
import { checkClaims } from "./claims.js";
import { readStudyRow } from "./studyFiles.js";
import { mlaRopeWidest, runName, STUDY_VARIANTS } from "./runs.js";
import type { CheckedStudy } from "./options.js";
import type { StudyOptions, StudyResult, StudyRow } from "./study.js";

/** The finished study's result; `rows` (this call's runs, in order) gains the earlier calls' runs. */
export function writeResults(o: StudyOptions, { log, c, runs, seq, batch, lr, seed, device }: CheckedStudy, rows: StudyRow[]): StudyResult {
  // Runs finished by earlier calls with other --variants or --ranks stay in the study's report (a call
  // naming fewer had rewritten it with its own rows alone).
  // Only the study's own row files (mha, VARIANT-L<width>): a copy or a note named *.row.json is not a run.
  const runFile = /^(mha|(mla|mla-rope|eg-mla)-L\d+)\.row\.json$/;
  const earlier = fs
    .readdirSync(o.out)
    .filter((f) => runFile.test(f))
    .map((f) => f.slice(0, -".row.json".length))
    .filter((name) => !runs.some((r) => runName(r) === name))
    .map((name) => readStudyRow(path.join(o.out, `${name}.row.json`), name));
  if (earlier.length) {
    log.info(`the report also holds ${earlier.length} run${earlier.length === 1 ? "" : "s"} finished by earlier calls: ${earlier.map((r) => r.label).join("; ")}`);
    rows.push(...earlier);
    // All of them in the study's order: MHA, then each variant from its widest latent down.
    rows.sort((a, b) => STUDY_VARIANTS.indexOf(a.variant) - STUDY_VARIANTS.indexOf(b.variant) || (b.latentDim ?? Infinity) - (a.latentDim ?? Infinity));
  }
  // The device as given, and for auto the backend it picked (the runs' own lines said so; the report should too).
  const deviceLabel = device === "auto" ? `auto (${selectBackend(device).name})` : device;
  // What each run trained: the trainer rounds the budget up to whole steps of batch × seq.
  const trainedTokens = stepsFor(o.tokens, seq * batch) * seq * batch;
  const meta = { like: o.like, hidden: c.hiddenSize, mlaRopeWidest: mlaRopeWidest(c), data: o.data, tokens: o.tokens, trainedTokens, seq, batch, lr, seed, device: deviceLabel, date: new Date().toISOString() };
  // The claims' verdicts beside the rows (added after them: readers of rows and meta are unchanged).
  const claims = checkClaims(rows, c.hiddenSize, meta.mlaRopeWidest);
  // Each whole or absent (temp file + rename), as the rows are: never a truncated file from a killed study.
  // Rendered before any is written, so a failure leaves the three as the last call wrote them.
  const report = path.join(o.out, "report.md");
  const html = path.join(o.out, "report.html");
  const [md, page] = [studyMarkdown(meta, rows), studyHtml(meta, rows)];
  writeFileAtomic(path.join(o.out, "study.json"), JSON.stringify({ ...meta, rows, claims }, null, 2) + "\n");
  writeFileAtomic(report, md);
  writeFileAtomic(html, page);
  return { rows, report, html, stoppedEarly: false, claims };
}
