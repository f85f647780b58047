/**
 * Training checkpoints: `OUT/checkpoint/` holds state.safetensors (F32 parameters `param.PATH` and
 * AdamW moments `adam_m.PATH`, `adam_v.PATH`) and state.json (step, data position, settings,
 * model fingerprint). It is replaced atomically: written beside, then renamed over the old one.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { SafetensorsFile, writeSafetensorsSync } from "../io/safetensors.js";
import type { FloatArray } from "../tensor/tensor.js";

export interface TrainState {
  format: 1;
  step: number;
  epoch: number;
  cursor: number;
  tokensSeen: number;
  /** The settings that must match for --resume (hash of the resolved options and of the model). */
  fingerprint: string;
  settings: Record<string, unknown>;
}

export interface SavedTensors {
  paths: string[];
  params: FloatArray[];
  m: Float32Array[];
  v: Float32Array[];
}

export function checkpointDir(out: string): string {
  return path.join(out, "checkpoint");
}

export function saveCheckpoint(out: string, state: TrainState, t: SavedTensors): void {
  const final = checkpointDir(out);
  const tmp = fs.mkdtempSync(path.join(out, ".checkpoint.tmp-"));
  const f32 = (a: FloatArray) => new Uint8Array(Float32Array.from(a).buffer);
  const tensors = t.paths.flatMap((p, i) => [
    { name: `param.${p}`, dtype: "F32" as const, shape: [t.params[i]!.length], data: f32(t.params[i]!) },
    { name: `adam_m.${p}`, dtype: "F32" as const, shape: [t.m[i]!.length], data: f32(t.m[i]!) },
    { name: `adam_v.${p}`, dtype: "F32" as const, shape: [t.v[i]!.length], data: f32(t.v[i]!) },
  ]);
  writeSafetensorsSync(path.join(tmp, "state.safetensors"), tensors, { format: "mha2mla-train" });
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

/** Loads a checkpoint into `t` (in place) after checking it belongs to this run's settings. */
export function loadCheckpoint(out: string, fingerprint: string, t: SavedTensors): TrainState {
  const dir = checkpointDir(out);
  const stateFile = path.join(dir, "state.json");
  if (!fs.existsSync(stateFile)) throw new MlaError("NOT_FOUND", `--resume: no checkpoint in ${dir}`, "train without --resume first, or point --out at the folder of the interrupted run");
  let state: TrainState;
  try {
    state = JSON.parse(fs.readFileSync(stateFile, "utf8")) as TrainState;
  } catch (e) {
    throw new MlaError("BAD_CHECKPOINT", `${stateFile}: not valid JSON (${(e as Error).message})`, "the checkpoint is corrupt; start again without --resume");
  }
  if (state.fingerprint !== fingerprint)
    throw new MlaError("BAD_CHECKPOINT", `--resume: the checkpoint in ${dir} was made for a different model or different training settings`, `resume with the same MODEL and flags as the interrupted run (it used ${JSON.stringify(state.settings)})`);
  const f = SafetensorsFile.open(path.join(dir, "state.safetensors"));
  try {
    t.paths.forEach((p, i) => {
      const copy = (name: string, into: FloatArray) => {
        const src = f.readF32(name);
        if (src.length !== into.length) throw new MlaError("BAD_CHECKPOINT", `${dir}: "${name}" has ${src.length} values, the model needs ${into.length}`, "the checkpoint belongs to another model");
        into.set(src);
      };
      copy(`param.${p}`, t.params[i]!);
      copy(`adam_m.${p}`, t.m[i]!);
      copy(`adam_v.${p}`, t.v[i]!);
    });
  } finally {
    f.close();
  }
  return state;
}
