/**
 * The conversion options that read calibration text (`--calib`): which of them a conversion uses
 * (so the pipeline reads the windows only then), and the one refusal when it is missing; shared by
 * both output formats, so each option's reason is written once.
 */
import { MlaError } from "../errors.js";

export interface CalibrationUses {
  ropeStrategy?: string;
  svdInit?: string;
  refitOutput?: boolean;
  kvSplit?: string;
}

/** The options of `o` that read calibration text: [flag, what it does with the text]. */
function calibrationUses(o: CalibrationUses): [string, string][] {
  const uses: [boolean, string, string][] = [
    [o.ropeStrategy === "2-norm", "--rope-strategy 2-norm", "ranks the frequency pairs by query and key norms measured on it"],
    [o.svdInit === "activations", "--svd-init activations", "weights the factorization by the activations it produces"],
    [o.refitOutput === true, "--refit-output", "fits o_proj on it"],
    [o.kvSplit === "per-layer", "--kv-split per-layer", "chooses each layer's split by its attention error on it"],
  ];
  return uses.filter(([on]) => on).map(([, flag, why]) => [flag, why]);
}

/** Whether any option of `o` reads calibration text. */
export function readsCalibration(o: CalibrationUses): boolean {
  return calibrationUses(o).length > 0;
}

/** Refuses, naming the first option that needs it and why, a conversion without calibration text whose options read some. */
export function requireCalibration(calib: string | null | undefined, o: CalibrationUses): void {
  const first = calib ? undefined : calibrationUses(o)[0];
  if (first) throw new MlaError("BAD_ARGUMENT", `${first[0]} needs calibration text: it ${first[1]}`, "pass --calib FILE (any text in the model's language)");
}
