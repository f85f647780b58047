/**
 * The folders a finetune run writes, checked before any work (tokenizing a corpus or loading a
 * model takes minutes; a refusal after them wastes those minutes):
 * - the run folder --out is never an input, inside one or holding one; with --resume it must hold a
 *   checkpoint, otherwise an existing non-empty one is replaced only with --force;
 * - the --token-cache folder outlives runs and is meant to be cleared at will, so it must be a
 *   folder of its own. Inside --out, --force would empty it (the reuse it exists for is lost) and a
 *   fresh run would find its own --out non-empty; holding the model, a data file, --out or the
 *   working folder, clearing it would delete them; being one of them, cache files would be mixed
 *   into a model folder or written over a data file.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { isEarlierModelOutput, refuseFileAsOutDir, refuseForeignFolder } from "../io/atomicDir.js";
import { LOG_FILE, SUMMARY_FILE } from "./resume.js";
import { refuseOutOverInputs, type InputPath } from "../io/outGuard.js";
import { emptyRunFolder, entriesBesideLock, refuseLocked } from "../io/outLock.js";

export interface RunFolders {
  out: string;
  data: string[];
  distill?: string;
  tokenCache?: string;
  resume?: boolean;
  force?: boolean;
}

const TOKEN_CACHE_HINT = "the token cache is kept across runs and may be cleared at any time, so it needs a folder of its own, apart from MODEL, the --data files, the --out run folder (which --force empties) and the working folder: e.g. --token-cache ./token-cache";

/** Refuses run folders that would harm an input or each other; returns --out as an absolute path. */
export function checkRunFolders(o: RunFolders, modelDir: string): string {
  const inputs: InputPath[] = [{ name: "the input model folder", path: modelDir }, ...o.data.map((f) => ({ name: "--data", path: f })), { name: "--distill", path: o.distill }];
  if (o.resume && o.force) throw new MlaError("BAD_ARGUMENT", "--resume and --force contradict each other: --resume continues the run in --out, --force starts it over", "pass --resume to continue the run, or --force to start over");
  refuseOutOverInputs("--out", o.out, inputs);
  if (o.tokenCache !== undefined) checkTokenCache(o.tokenCache, [...inputs, { name: "the --out run folder", path: o.out, output: true }]);
  const out = path.resolve(o.out);
  refuseFileAsOutDir(o.out);
  if (!o.resume && !o.force && fs.existsSync(out) && entriesBesideLock(out).length > 0) {
    // A run under way there is named, rather than the folder said to exist.
    refuseLocked(o.out);
    // A run stopped before its first checkpoint cannot be resumed: --resume would say so, and point back here.
    const has = (f: string) => fs.existsSync(path.join(out, f));
    const unresumable = has(LOG_FILE) && !has("checkpoint") && !has(SUMMARY_FILE);
    throw new MlaError("EXISTS", `output ${o.out} already exists${unresumable ? " and holds a run stopped before its first checkpoint: nothing to resume" : ""}`, unresumable ? "pass --force to start over, or choose another --out" : "pass --resume to continue an interrupted run, --force to start over, or choose another --out");
  }
  // A model folder this tool wrote (a conversion) may be replaced too; a pretrained model's may not.
  const earlierRun = (dir: string, entries: readonly string[]) => [LOG_FILE, SUMMARY_FILE, "checkpoint"].some((m) => entries.includes(m)) || isEarlierModelOutput(dir, entries);
  refuseForeignFolder(o.out, !!o.force, earlierRun, "fine-tuning run (no train_log.jsonl, finetune.json, checkpoint or model this tool wrote)");
  return out;
}

/** Refuses a --token-cache folder over `avoid` (the run's inputs and --out) or at a file. */
export function checkTokenCache(dir: string, avoid: readonly InputPath[]): void {
  refuseOutOverInputs("--token-cache", dir, avoid, TOKEN_CACHE_HINT);
  refuseFileAsOutDir(dir, { flag: "--token-cache", hint: TOKEN_CACHE_HINT });
}

/** A fresh run starts in an empty --out (an old one was allowed by checkRunFolders: empty, or --force), its lock kept. */
export function startRunFolder(out: string): void {
  emptyRunFolder(out, "the run folder");
}
