/** What the deepseek export tests read off a written folder: its float64 logits and the logger's lines. */
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import { loadModel } from "../../src/model/llama.js";
import type { Logger } from "../../src/util/log.js";

/** The float64 logits [T·V] of the model in `dir` on the token ids `ids`. */
export function f64Logits(dir: string, ids: Int32Array): Float64Array {
  const { model } = loadModel(dir, { backend: new ReferenceBackend("f64") });
  return Float64Array.from(model.forward(ids).toArray());
}

/** A logger that keeps its warnings and info lines for the test to read. */
export function capture(): { logger: Logger; warnings: string[]; infos: string[] } {
  const warnings: string[] = [];
  const infos: string[] = [];
  return { warnings, infos, logger: { info: (m: string) => infos.push(m), warn: (m: string) => warnings.push(m) } };
}
