/**
 * `pipeline`: convert → optional fine-tune → optional export to deepseek_v3 → evaluate the
 * original, the converted, the fine-tuned and the exported model → report, in one output folder.
 * Each phase leaves its result there (eval-*.json, mla/, finetune/, deepseek/, report.*); re-running
 * the same command skips finished phases and resumes an interrupted fine-tune from its checkpoint.
 * Every check that needs no phase's result is made before the first phase (pipelineChecks.ts).
 */
import fs from "node:fs";
import path from "node:path";
import { ioError } from "./errors.js";
import { refuseFileAsOutDir, refuseForeignFolder, writeFileAtomic } from "./io/atomicDir.js";
import { refuseOutOverInputs } from "./io/outGuard.js";
import { convertWithWindows } from "./convert/pipeline.js";
import { convertDeepseekWithWindows, deepseekSettings } from "./deepseek/export.js";
import { exportDeepseekWithWindows } from "./deepseek/fromMla.js";
import { resolveModel } from "./io/modelDir.js";
import type { SettingsInput } from "./convert/plan.js";
import { evaluate, EvalResult } from "./eval/evaluate.js";
import type { TaskName } from "./eval/tasks/index.js";
import { writeReport } from "./eval/report/report.js";
import { finetune, FinetuneOptions } from "./finetune/trainer.js";
import { checkSameRun, runFingerprint } from "./pipelineState.js";
import { resumableStep, throwIfAborted } from "./util/abort.js";
import { silentLogger, Logger } from "./util/log.js";
import type { DeviceName } from "./backends/select.js";
import type { ProgressSink } from "./util/progress.js";
import { emptyRunFolder, entriesBesideLock, refuseLockedInside, withOutLock } from "./io/outLock.js";
import { checkOptions, checkTypes, conversionPhase, finetuneDone, foldersWritten, modelWritten, phaseDirs, pipelineEval } from "./pipelineChecks.js";

export interface PipelineOptions {
  out: string;
  force?: boolean;
  convert: SettingsInput;
  /** "deepseek": the converted model is a deepseek_v3 folder (`convert --format deepseek`), with these widths. */
  format?: "mha2mla" | "deepseek";
  /** Only with format "deepseek" (a width set otherwise is refused). */
  deepseek?: { ropeDim?: number; kvLoraRank?: number; interleave?: boolean };
  /** The fine-tune, on `data`; a setting with no data is refused. */
  finetune?: Omit<FinetuneOptions, PipelineOwned>;
  /** "deepseek": write the final model (fine-tuned, else converted) as a deepseek_v3 folder (`export --format deepseek`, exact; needs convert.ropeDisjoint or one KV head). */
  export?: "deepseek";
  /**
   * false: the deepseek_v3 folder the pipeline writes (format "deepseek" or export "deepseek") has no
   * attention biases, so vLLM and SGLang serve it as written (`--no-attention-bias`; kv_a_layernorm's
   * weight fitted on convert.calib, which it needs). Default true: the exact form.
   */
  attentionBias?: boolean;
  evalText?: string;
  evalTokens?: number;
  evalCtx?: number;
  tasks?: TaskName[];
  dataDir?: string;
  limit?: number;
  device?: DeviceName;
  logger?: Logger;
  progress?: ProgressSink | null;
  /**
   * Polled between phases and by the fine-tune after every step: true ends the run with stoppedEarly.
   * A conversion or evaluation under way runs to its end first; `signal` stops those too (the CLI's Ctrl-C).
   */
  shouldStop?: () => boolean;
  /**
   * Aborting it stops the current phase at its next safe point (a conversion after the factorization
   * or calibration window under way, an evaluation after its window, a fine-tune after its step or
   * validation window, with the last step's checkpoint) and throws MlaError
   * INTERRUPTED. Finished phases are kept and nothing half-written is: the same call resumes.
   */
  signal?: AbortSignal;
}

/** The fine-tune's options the pipeline sets itself (its phase's folder, resume, output and stop). */
type PipelineOwned = "out" | "resume" | "force" | "logger" | "progress" | "shouldStop" | "signal";

export interface PipelineResult {
  out: string;
  phases: { name: string; skipped: boolean; seconds: number }[];
  evals: EvalResult[];
  report: { html: string; md: string } | null;
  stoppedEarly: boolean;
}

/** The options pipeline.json records: what the run does, not how this call reports (a stream's internals) or is stopped. */
function recordedSettings({ logger: _l, progress: _p, shouldStop: _s, signal: _a, ...settings }: PipelineOptions): object {
  return settings;
}

export async function pipeline(spec: string, o: PipelineOptions): Promise<PipelineResult> {
  // Folders the run makes for itself outside --out (a scratch token cache: checkFinetuneIds), gone when it ends however it ends.
  const scratch: string[] = [];
  try {
    return await runPipeline(spec, o, scratch);
  } finally {
    for (const d of scratch) fs.rmSync(d, { recursive: true, force: true });
  }
}

async function runPipeline(spec: string, o: PipelineOptions, scratch: string[]): Promise<PipelineResult> {
  checkTypes(o);
  throwIfAborted(o.signal);
  const log = o.logger ?? silentLogger;
  const out = path.resolve(o.out);
  const srcDir = resolveModel(spec).dir;
  const inputs = [
    { name: "the input model folder", path: srcDir },
    { name: "--calib", path: o.convert.calib },
    { name: "--eval-text", path: o.evalText },
    { name: "--data-dir", path: o.tasks?.length ? o.dataDir : undefined },
    ...(o.finetune?.data ?? []).map((f) => ({ name: "--finetune-data", path: f })),
  ];
  refuseOutOverInputs("--out", o.out, [...inputs, { name: "--distill", path: o.finetune?.distill }]);
  // Before --force clears --out (which may hold an earlier run's results): every input file exists.
  // Worded as convert's and eval's own checks word a missing input.
  for (const i of inputs.slice(1)) {
    if (!i.path) continue;
    try {
      fs.statSync(i.path);
    } catch (e) {
      throw ioError(`cannot read ${i.name}`, i.path, e, "nothing was changed");
    }
  }
  // A phase folder another run holds (a fine-tune in OUT/finetune) is refused now, not when its phase starts.
  refuseLockedInside(o.out, foldersWritten(out, o));
  const { cut, tokenCache } = await checkOptions(srcDir, o, log, out, scratch);
  const fingerprint = runFingerprint(spec, o);
  const stateFile = path.join(out, "pipeline.json");
  // An --out holding only the state file is a run whose first phase failed (on what only the work
  // finds, or, before the checks above cut the --calib windows, a calibration text too short): nothing
  // in it to lose, so a corrected command starts over.
  refuseFileAsOutDir(o.out);
  // The run's folder is held from here to the end, by this call alone (its phases' folders are inside it).
  const existed = fs.existsSync(out);
  return withOutLock(o.out, { command: "pipeline", log }, async () => {
    // Again, now that no run can start inside --out: one may have while the options were checked.
    refuseLockedInside(o.out, foldersWritten(out, o));
    const nothingDone = existed && entriesBesideLock(out).every((name) => name === "pipeline.json");
    if (existed && !o.force && !nothingDone) {
      checkSameRun(o.out, stateFile, spec, o, log);
    } else {
      refuseForeignFolder(o.out, !!o.force, ["pipeline.json"], "pipeline run (no pipeline.json)");
      emptyRunFolder(out, "the pipeline's --out folder");
      writeFileAtomic(stateFile, JSON.stringify({ fingerprint, model: spec, settings: recordedSettings(o), cwd: process.cwd(), started: new Date().toISOString() }, null, 2) + "\n");
    }
    const phases: PipelineResult["phases"] = [];
    // A stop asked for through shouldStop between phases (outside fine-tuning) ends the run before the next one;
    // finished phases are kept, and the same command resumes.
    let stoppedEarly = false;
    const resumes = `the finished phases are kept in ${o.out} (and an interrupted fine-tune's last checkpoint); call pipeline() again with the same options to resume`;
    const phase = async <T>(name: string, done: () => boolean, run: () => Promise<T>): Promise<void> => {
      const t0 = performance.now();
      if (done()) {
        phases.push({ name, skipped: true, seconds: 0 });
        log.info(`pipeline: ${name} already done`);
        return;
      }
      if (stoppedEarly || o.shouldStop?.()) {
        stoppedEarly = true;
        return;
      }
      log.info(`pipeline: ${name}`);
      await resumableStep(o.signal, resumes, run);
      // A fine-tune stopped part-way is not done: the next run resumes it.
      if (!stoppedEarly) phases.push({ name, skipped: false, seconds: (performance.now() - t0) / 1000 });
    };
    const evalTo = (label: string, model: string, file: string) =>
      phase(`eval ${label}`, () => fs.existsSync(file), async () => {
        const r = await evaluate(model, { ...pipelineEval(o), label, device: o.device, progress: o.progress, signal: o.signal, logger: log, pastPositionsWarned: true });
        writeFileAtomic(file, JSON.stringify(r, null, 2) + "\n");
      });
    const { mla, tuned: ft, exported } = phaseDirs(out);
    const files = { original: path.join(out, "eval-original.json"), converted: path.join(out, "eval-converted.json"), finetuned: path.join(out, "eval-finetuned.json"), exported: path.join(out, "eval-exported.json") };
    const common = { out: mla, force: true, device: o.device, progress: o.progress, logger: log, signal: o.signal };
    await phase("convert", () => modelWritten(mla), (): Promise<unknown> =>
      o.format === "deepseek"
        ? convertDeepseekWithWindows(spec, { ...deepseekSettings(o.convert), ...o.deepseek, ...(o.attentionBias === false ? { attentionBias: false } : {}), ...common }, cut)
        : convertWithWindows(spec, { ...conversionPhase(o), ...common }, cut),
    );
    await evalTo("original", spec, files.original);
    await evalTo("converted", mla, files.converted);
    if (o.finetune) {
      await phase("finetune", () => finetuneDone(out), async () => {
        const resume = fs.existsSync(path.join(ft, "checkpoint", "state.json"));
        // The pipeline's device covers every phase (the fine-tune's own, where a script sets one, wins).
        // The token cache checkOptions tokenized --finetune-data into, where it did: read, not tokenized again.
        const r = await finetune(mla, { ...o.finetune!, ...(tokenCache === undefined ? {} : { tokenCache }), device: o.finetune!.device ?? o.device, out: ft, resume, force: !resume, logger: log, progress: o.progress, shouldStop: o.shouldStop, signal: o.signal });
        stoppedEarly = r.stoppedEarly;
      });
      await evalTo("fine-tuned", ft, files.finetuned);
    }
    if (o.export) {
      await phase("export", () => modelWritten(exported), () =>
        exportDeepseekWithWindows(o.finetune ? ft : mla, {
          out: exported,
          force: true,
          // The bias-free form fits kv_a_layernorm on the conversion's calibration text.
          ...(o.attentionBias === false ? { attentionBias: false, calib: o.convert.calib, calibSamples: o.convert.calibSamples, calibLen: o.convert.calibLen } : {}),
          device: o.device,
          progress: o.progress,
          logger: log,
          signal: o.signal,
        }, cut),
      );
      await evalTo("exported (deepseek_v3)", exported, files.exported);
    }
    if (stoppedEarly) return { out, phases, evals: [], report: null, stoppedEarly };
    const jsons = [files.original, files.converted, ...(o.finetune ? [files.finetuned] : []), ...(o.export ? [files.exported] : [])];
    const t0 = performance.now();
    const report = writeReport(jsons, path.join(out, "report.html"), { trainLogs: o.finetune ? [path.join(ft, "train_log.jsonl")] : [] });
    phases.push({ name: "report", skipped: false, seconds: (performance.now() - t0) / 1000 });
    return { out, phases, evals: jsons.map((f) => JSON.parse(fs.readFileSync(f, "utf8")) as EvalResult), report, stoppedEarly };
  });
}
