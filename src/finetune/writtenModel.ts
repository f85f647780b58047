/**
 * The model a run writes: every weight in its source checkpoint's dtype (float32 where the source has
 * no such tensor). The float32 master weights are rounded to that dtype as they are written, so a bf16
 * model differs from the masters by up to half a bf16 step per weight (~1e-3 nats of validation NLL on
 * a small model). roundToWritten applies that rounding to the model in place, so the final validation
 * measures the model the user gets, not the masters.
 */
import fs from "node:fs";
import path from "node:path";
import { Checkpoint, CheckpointWriter, copyModelSideFiles } from "../io/checkpoint.js";
import { decodeToF32, DType, encodeFromF32 } from "../io/dtype.js";
import { copyFileFresh, makeOwnedTemp } from "../io/atomicDir.js";
import { namedTensors } from "../model/weights.js";
import type { LlamaModel } from "../model/llama.js";
import type { Tensor } from "../tensor/tensor.js";
import { MODEL_TMP } from "./checkpoint.js";

/** Dtypes that lose precision against float32 (F64 and F32 hold every float32 value as is). */
const NARROW: readonly DType[] = ["BF16", "F16"];

/** Each weight of `model` with its checkpoint name and the dtype it is written in (its source's). */
function writtenTensors(srcDir: string, model: LlamaModel): { name: string; t: Tensor; dtype: DType }[] {
  const src = Checkpoint.open(srcDir);
  try {
    return namedTensors(model.config, model.weights).map(([name, t]) => ({ name, t, dtype: (src.has(name) ? src.entry(name).dtype : "F32") as DType }));
  } finally {
    src.close();
  }
}

/**
 * Rounds every weight of `model` in place to the dtype it will be written in (round to nearest even,
 * as writeModel's encoding), one weight at a time through the host. Idempotent: a rounded weight
 * rounds to itself, so a run whose end is redone (--resume after a crash there) measures and writes
 * the same model. Returns the number of weights that changed; the caller refreshes what is derived
 * from them (TrainState.loaded: the bf16 copy and the model's cached constants).
 */
export function roundToWritten(srcDir: string, model: LlamaModel): number {
  const b = model.backend;
  let changed = 0;
  for (const { t, dtype } of writtenTensors(srcDir, model)) {
    if (!NARROW.includes(dtype) || t.dtype !== "f32") continue; // a bf16-held weight (inference loads) is rounded already
    const now = t.toArray() as Float32Array;
    const rounded = decodeToF32(dtype, encodeFromF32(dtype, now));
    if (rounded.every((x, i) => Object.is(x, now[i]))) continue;
    // As TrainState.slotIo writes a slot: a host backend's download is the storage itself.
    if (b.overwrite) b.overwrite(t, rounded);
    else now.set(rounded);
    changed++;
  }
  return changed;
}

/** Writes the trained weights (in the source checkpoint's dtypes) and the model files into `out`, each file atomically. */
export async function writeModel(srcDir: string, out: string, model: LlamaModel): Promise<void> {
  const tensors = writtenTensors(srcDir, model);
  const tmp = makeOwnedTemp(out, MODEL_TMP);
  const w = new CheckpointWriter(tmp, tensors.map((x) => ({ name: x.name, dtype: x.dtype, shape: [...x.t.shape] })), { metadata: { format: "pt" } });
  for (const x of tensors) await w.append(encodeFromF32(x.dtype, x.t.toArray()));
  await w.close();
  copyFileFresh(path.join(srcDir, "config.json"), path.join(tmp, "config.json"));
  copyModelSideFiles(srcDir, tmp);
  // The conversion's record (its settings, calibration, report), which the config of a deepseek_v3 export points to.
  if (fs.existsSync(path.join(srcDir, "mla_conversion.json"))) copyFileFresh(path.join(srcDir, "mla_conversion.json"), path.join(tmp, "mla_conversion.json"));
  for (const f of fs.readdirSync(tmp)) fs.renameSync(path.join(tmp, f), path.join(out, f));
  fs.rmSync(tmp, { recursive: true, force: true });
}
