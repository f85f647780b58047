/**
 * What a study's folder carries from one call to the next: study-state.json, whose settings a re-run
 * must match for its runs to be one study's (the variant and rank lists may change), the folders a
 * call writes in, and whether a failed first call kept work worth its folder. In one place, so that
 * the resume rules are not read between the runs' training and their report.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { resolveModel } from "../io/modelDir.js";
import { DEFAULT_GATE_DIM } from "../convert/plan.js";
import type { Logger } from "../util/log.js";
import { refuseForeignFolder, writeFileAtomic } from "../io/atomicDir.js";
import { emptyRunFolder, entriesBesideLock } from "../io/outLock.js";
import type { StudyMeta } from "./report.js";
import { readStudyJson } from "./studyFiles.js";
import { runName, type StudyRun } from "./runs.js";
import type { CheckedStudy } from "./options.js";
import type { StudyOptions } from "./study.js";

/**
 * The folders inside --out that this call writes in, where another run's lock would stop it part-way
 * (a fine-tune started in OUT/mla-L32-trained was found only when that run began, after the runs
 * before it trained): the token cache and each unfinished run's model and training folders, and with
 * --force, which empties --out, every folder there.
 */
export function foldersWritten(out: string, runs: readonly StudyRun[], force: boolean): string[] {
  const isFolder = (p: string) => fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() === true;
  if (force) return isFolder(out) ? entriesBesideLock(out).map((f) => path.join(out, f)).filter(isFolder) : [];
  const unfinished = runs.map(runName).filter((name) => !fs.existsSync(path.join(out, `${name}.row.json`)));
  // The MHA run trains init-mha, which it does not write in once made.
  return [path.join(out, "tokens"), ...unfinished.flatMap((name) => [...(name === "mha" ? [] : [path.join(out, name)]), path.join(out, `${name}-trained`)])];
}

/** What every run of a study shares, as study-state.json records it. */
export type StudySettings = Pick<StudyMeta, "like" | "data" | "tokens" | "seq" | "batch" | "lr" | "seed"> & { valFraction: number; tokenCache: string; evalEvery: number | null; gateDim: number | null };

/** Fixed with the options' checks, before the folder is taken: what this call records in study-state.json, or must find there. */
export function studySettings(o: StudyOptions, { like, seq, batch, lr, seed, valFraction }: CheckedStudy): StudySettings {
  // What every run shares; the list of runs (variants × ranks) may grow between sittings, since each
  // run is trained on its own from the same initialization.
  // Paths as absolute ones (the same files named from another folder, or ./data against data, are the
  // same study); the gate width only where an eg-mla run reads it (null: none of this call's does).
  return { like, data: path.resolve(o.data), tokens: o.tokens, seq, batch, lr, seed, valFraction, tokenCache: path.resolve(o.out, "tokens"), evalEvery: o.evalEvery ?? null, gateDim: o.variants.includes("eg-mla") ? (o.gateDim ?? DEFAULT_GATE_DIM) : null };
}

/**
 * A recorded study's settings with its paths absolute, as this version records them: earlier ones kept
 * paths as typed (a re-run naming the same files another way was refused), relative to the folder the
 * study ran from, taken to be this call's. Its gate width is null where no eg-mla run in the folder `out`
 * read it (earlier versions recorded the default there).
 */
function normalizedSettings(recorded: unknown, out: string): Record<string, unknown> {
  const r = { ...((recorded ?? {}) as Record<string, unknown>) };
  if (r["gateDim"] != null && !fs.readdirSync(out).some((f) => f.startsWith("eg-mla-L"))) r["gateDim"] = null;
  const abs = (k: string, f: (v: string) => string) => typeof r[k] === "string" && (r[k] = f(r[k] as string));
  abs("like", (v) => {
    try {
      return resolveModel(v).dir;
    } catch {
      return path.resolve(v);
    }
  });
  abs("data", (v) => path.resolve(v));
  abs("tokenCache", (v) => path.resolve(v));
  return r;
}

/** The flag of each setting a study's runs share, for a refusal naming what changed. */
const STUDY_FLAGS = { like: "--like", data: "--data", tokens: "--tokens", seq: "--seq", batch: "--batch", lr: "--lr", seed: "--seed", valFraction: "--val-fraction", tokenCache: "the token cache", evalEvery: "--eval-every", gateDim: "--gate-dim" } as const;

/**
 * Resuming is sound only where every setting the runs share is the one the folder's study recorded
 * (its runs are compared as if trained alike), and a folder holding no study must not be taken for
 * one. Sets `made.fresh` once it has made (or emptied, with --force) the folder; `existed`: whether
 * --out was there before the lock made it.
 */
export function openStudyState(o: StudyOptions, ranks: readonly string[], settings: StudySettings, existed: boolean, made: { fresh: boolean }, log: Logger): void {
  const stateFile = path.join(o.out, "study-state.json");
  if (existed && !o.force) {
    const prev = fs.existsSync(stateFile) ? readStudyJson<{ settings?: unknown; variants?: string[]; ranks?: string[] }>(stateFile, "the study's settings", "pass --force to start the study over, or choose another --out") : null;
    if (!prev) {
      // An empty folder (`mkdir OUT` first) is one --force takes: the hint said it would not.
      let empty = false;
      try {
        empty = entriesBesideLock(o.out).length === 0;
      } catch {
        // unreadable: the general hint
      }
      throw new MlaError("EXISTS", `output ${o.out} already exists and holds no study (no study-state.json)`, empty ? "it is empty: pass --force to start the study in it, or choose another --out" : "choose another --out (--force replaces only an earlier study's folder)");
    }
    const was = normalizedSettings(prev.settings, o.out);
    // A study whose runs so far had no gate keeps the gate of the first eg-mla run it gets, and the reverse.
    settings = { ...settings, gateDim: settings.gateDim ?? (was["gateDim"] as number | null | undefined) ?? null };
    if (was["gateDim"] === null) was["gateDim"] = settings.gateDim;
    // The token cache is the folder's own (OUT/tokens): --out named another way is still this folder.
    const changed = (Object.keys(settings) as (keyof StudySettings)[]).filter((k) => k !== "tokenCache" && JSON.stringify(was[k] ?? null) !== JSON.stringify(settings[k]));
    if (changed.length) {
      // Which: "--lr 0.001 → 0.002", as the pipeline names a changed option.
      const named = changed.map((k) => `${STUDY_FLAGS[k]} ${JSON.stringify(was[k] ?? null)} → ${JSON.stringify(settings[k])}`);
      throw new MlaError("EXISTS", `output ${o.out} already exists from a study with other settings: ${named.join("; ")} (the study's value → this call's)`, "re-run it with the same settings (other --variants or --ranks are fine: finished runs are kept), pass --force to start over, or choose another --out");
    }
    const same = JSON.stringify([prev.variants, prev.ranks]) === JSON.stringify([o.variants, ranks]);
    log.info(same ? `resuming the study in ${o.out}` : `continuing the study in ${o.out} with --variants ${o.variants.join(",")}${ranks.length ? ` --ranks ${ranks.join(",")}` : ""}: finished runs are kept, the others trained`);
    if (!same || JSON.stringify(prev.settings) !== JSON.stringify(settings)) writeFileAtomic(stateFile, JSON.stringify({ ...prev, settings, variants: o.variants, ranks }, null, 2) + "\n");
  } else {
    refuseForeignFolder(o.out, !!o.force, ["study-state.json", "study.json"], "study (no study-state.json)");
    emptyRunFolder(o.out, "the study's --out folder");
    made.fresh = true;
    writeFileAtomic(stateFile, JSON.stringify({ settings, variants: o.variants, ranks, started: new Date().toISOString() }, null, 2) + "\n");
  }
}

/** Whether a study folder holds work worth keeping: a finished run's row, or a training run's checkpoint. */
export function keptWork(out: string): boolean {
  if (!fs.existsSync(out)) return false;
  return fs.readdirSync(out).some((n) => n.endsWith(".row.json") || fs.existsSync(path.join(out, n, "checkpoint", "state.json")));
}
