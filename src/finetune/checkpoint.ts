/**
 * Training checkpoints: `OUT/checkpoint/` holds state.safetensors (F32 parameters `param.PATH` and
 * AdamW moments `adam_m.PATH`, `adam_v.PATH`) and state.json (step, data position, settings,
 * model fingerprint). It is replaced atomically: written beside, then renamed over the old one.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { makeOwnedTemp, sweepStaleTemps } from "../io/atomicDir.js";
import { entriesBesideLock } from "../io/outLock.js";
import { SafetensorsFile, SafetensorsWriter } from "../io/safetensors.js";
import { readJsonObject } from "../io/jsonFile.js";

export interface TrainState {
  format: 1;
  step: number;
  epoch: number;
  cursor: number;
  tokensSeen: number;
  /**
   * Training seconds up to this step over all the run's sittings (a resumed run adds its own), so a
   * resumed run reports the run's time and rate; absent in checkpoints from before it was recorded.
   */
  seconds?: number;
  /**
   * The most device memory held at once (bytes) over the run's sittings up to this step, for the same
   * reason; absent where the backend does not count it, and in older checkpoints.
   */
  peakDeviceBytes?: number;
  /** The settings that must match for --resume (hash of the resolved options and of the model). */
  fingerprint: string;
  settings: Record<string, unknown>;
}

/** The three float32 arrays kept per trainable weight. */
export type StateKind = "param" | "adam_m" | "adam_v";
export const STATE_KINDS: readonly StateKind[] = ["param", "adam_m", "adam_v"];

/**
 * The optimizer state, one weight at a time: a 7B model's state is ~80 GB, more than a host should
 * hold at once (and more than one typed array can), so it is read from and written to the device
 * slot by slot while the file streams.
 */
export interface StateSlots {
  paths: string[];
  sizes: number[];
  /** The values of weight `i` (length sizes[i]); the caller may keep or drop the array. */
  read(kind: StateKind, i: number): Float32Array;
  /** Overwrites weight `i` with `data` (length sizes[i]). */
  write(kind: StateKind, i: number, data: Float32Array): void;
}

/** Bytes a checkpoint of `params` trainable weights takes on disk: three float32 arrays each, and a small header. */
export function checkpointBytes(params: number): number {
  return 12 * params + (1 << 20);
}

export function checkpointDir(out: string): string {
  return path.join(out, "checkpoint");
}

const CHECKPOINT_TMP = ".checkpoint.tmp-";
/** The temporary folder the finished model's files are written into before they move into --out (trainer.ts). */
export const MODEL_TMP = ".model.tmp-";

/**
 * Undoes what a run killed while saving left in `out` (before --resume reads it): the half-written
 * temporary folders (a 7B model's checkpoint is ~84 GB), and a checkpoint moved aside to
 * `checkpoint.old` whose replacement had not yet moved into place, which is then the last whole one.
 */
export function recoverInterruptedSave(out: string): void {
  for (const prefix of [CHECKPOINT_TMP, MODEL_TMP]) sweepStaleTemps(out, prefix);
  const final = checkpointDir(out);
  const old = final + ".old";
  if (!fs.existsSync(old)) return;
  if (!fs.existsSync(final) && fs.existsSync(path.join(old, "state.json"))) fs.renameSync(old, final);
  else fs.rmSync(old, { recursive: true, force: true });
}

export function saveCheckpoint(out: string, state: TrainState, t: StateSlots): void {
  const final = checkpointDir(out);
  const tmp = makeOwnedTemp(out, CHECKPOINT_TMP);
  const specs = t.paths.flatMap((p, i) => STATE_KINDS.map((k) => ({ name: `${k}.${p}`, dtype: "F32" as const, shape: [t.sizes[i]!] })));
  const w = new SafetensorsWriter(path.join(tmp, "state.safetensors"), specs, { format: "mha2mla-train" });
  t.paths.forEach((_, i) => {
    for (const k of STATE_KINDS) {
      const a = t.read(k, i);
      w.appendSync(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    }
  });
  w.closeSync();
  fs.writeFileSync(path.join(tmp, "state.json"), JSON.stringify(state, null, 2) + "\n");
  const old = fs.existsSync(final) ? final + ".old" : null;
  if (old) {
    fs.rmSync(old, { recursive: true, force: true });
    fs.renameSync(final, old);
  }
  fs.renameSync(tmp, final);
  if (old) fs.rmSync(old, { recursive: true, force: true });
  // Test hook: die like `kill -9` right after the checkpoint of this step is in place, so resume tests
  // interrupt at a known step whatever the machine's speed.
  if (process.env["MHA2MLA_TEST_KILL_AFTER_SAVE"] === String(state.step)) process.kill(process.pid, "SIGKILL");
}

/** The state.json of the checkpoint in `out` (--resume reads it before any work; resume.ts checks it is this run's). */
export function readCheckpointState(out: string): TrainState {
  recoverInterruptedSave(out);
  const dir = checkpointDir(out);
  const stateFile = path.join(dir, "state.json");
  if (!fs.existsSync(out)) throw new MlaError("NOT_FOUND", `--resume: ${out} does not exist: there is no run there to resume (a run stopped before its first step keeps nothing)`, "train without --resume to start it, or point --out at the folder of the interrupted run");
  // Past the first step but before the first checkpoint, a run's folder holds its log: training without
  // --resume would be refused as an existing --out, so the way out is --force.
  if (!fs.existsSync(stateFile)) throw new MlaError("NOT_FOUND", `--resume: no checkpoint in ${dir}`, entriesBesideLock(out).length ? "the run there stopped before its first checkpoint: start it over with --force instead of --resume, or point --out at the folder of the interrupted run" : "train without --resume first, or point --out at the folder of the interrupted run");
  return readJsonObject(stateFile, { code: "BAD_CHECKPOINT", hint: "the checkpoint is corrupt; start the run over: --force instead of --resume" }) as unknown as TrainState;
}

/** Loads the weights and moments of the checkpoint in `out` into `t` (in place). */
export function loadCheckpoint(out: string, t: StateSlots): void {
  const dir = checkpointDir(out);
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(path.join(dir, "state.safetensors"));
  } catch (e) {
    // The reader's own hint ("truncated or corrupt") leaves out what to do about a run's checkpoint.
    if (!(e instanceof MlaError) || e.code === "IO") throw e;
    throw new MlaError("BAD_CHECKPOINT", e.message.split("\n  hint: ")[0]!, "the checkpoint is damaged (a full disk, or a copy cut short?): start the run over with --force instead of --resume", { cause: e });
  }
  try {
    t.paths.forEach((p, i) => {
      for (const k of STATE_KINDS) {
        const name = `${k}.${p}`;
        if (!f.tensors.has(name)) throw new MlaError("BAD_CHECKPOINT", `${dir}: "${name}" is missing`, "the checkpoint belongs to another model or another --train choice");
        const src = f.readF32(name);
        if (src.length !== t.sizes[i]) throw new MlaError("BAD_CHECKPOINT", `${dir}: "${name}" has ${src.length} values, the model needs ${t.sizes[i]}`, "the checkpoint belongs to another model");
        t.write(k, i, src);
      }
    });
  } finally {
    f.close();
  }
}
