/**
 * The source checkpoint against its config.json, from the headers only, before any work (a dry run
 * too): every tensor the config declares is there, with the shape the config implies and a floating
 * dtype. The writers (`convert` in both formats, `export --format deepseek`) read tensors by name in
 * pieces and trust their sizes, so a mismatch found later costs the work done, and one never found
 * (a deepseek layer computed from a k_proj with half the rows the config says, an I32 tensor decoded as
 * numbers) writes a model of garbage.
 */
import { MlaError } from "../errors.js";
import { type Checkpoint, FLOAT_DTYPES } from "../io/checkpoint.js";
import type { ModelConfig } from "../model/config.js";
import { checkShape, expectedTensors } from "../model/weights.js";

const HEAD = "lm_head.weight";

/** Refuses `src` where a tensor `c` declares is missing, of another shape, or not floating point. */
export function requireSourceTensors(src: Checkpoint, c: ModelConfig): void {
  for (const { name, shape } of expectedTensors(c)) {
    if (!src.has(name))
      throw new MlaError(
        "BAD_CHECKPOINT",
        `${src.dir}: tensor "${name}" is missing${name === HEAD ? " and tie_word_embeddings is not true" : ""}`,
        name === HEAD ? "set tie_word_embeddings: true in config.json if the model shares its embedding" : "the checkpoint does not match its config.json (wrong architecture or incomplete download)",
      );
    checkShape(src, name, shape);
    const { dtype } = src.entry(name);
    if (!FLOAT_DTYPES.includes(dtype)) throw new MlaError("BAD_CHECKPOINT", `${src.dir}: tensor "${name}" is ${dtype}`, "weights must be floating point (F32, F16, BF16 or F64; quantized checkpoints are not read)");
  }
}

/**
 * The names of the tensors `src` holds that its config `c` does not declare (expectedTensors), in the
 * checkpoint's order: our format copies them unchanged (undeclaredWarning), `convert --format deepseek`
 * and `export --format deepseek` drop them (../deepseek/stream.ts, strayNotes says why).
 */
export function undeclaredTensors(src: Checkpoint, c: ModelConfig): string[] {
  const declared = new Set(expectedTensors(c).map((t) => t.name));
  return src.names().filter((n) => !declared.has(n));
}

/**
 * The warning for the tensors `undeclared` of `src` (undeclaredTensors), or null where there are none.
 * Our format carries them unchanged (as it copies every tensor it does not factor): no loader of the
 * source applies them, so they change nothing; named, in case the config is what is wrong (a layer past
 * num_hidden_layers, a bias without attention_bias).
 */
export function undeclaredWarning(src: Checkpoint, c: ModelConfig, undeclared: readonly string[]): string | null {
  // Old transformers saved RoPE's inverse frequencies, a buffer every loader recomputes from the config: no sign of a wrong config.
  const stray = undeclared.filter((n) => !n.endsWith("rotary_emb.inv_freq"));
  if (!stray.length) return null;
  const past = stray.filter((n) => Number(/^model\.layers\.(\d+)\./.exec(n)?.[1] ?? -1) >= c.layers).length;
  const [what, it] = stray.length === 1 ? [`tensor ${stray[0]}`, "it"] : [`${stray.length} tensors (the first ${stray[0]})`, "them"];
  const deeper = past ? `, ${past === stray.length ? (stray.length === 1 ? "in a layer" : "all in layers") : `${past} in layers`} past num_hidden_layers ${c.layers}` : "";
  return `${src.dir} holds ${what} that its config.json does not declare${deeper}: neither transformers nor this tool applies ${it} to the model, and the converted folder carries ${it} unchanged; if the source was meant to use ${it}, its config.json is wrong`;
}

/**
 * `values`, read from tensor `name` of the checkpoint in `dir` for a factorization, refused where one
 * is NaN or infinite: the SVD of such a matrix is garbage throughout (every latent dim mixes every
 * row), and the conversion wrote it without a word.
 */
export function finiteForFactoring(dir: string, name: string, values: Float32Array): Float32Array {
  for (let i = 0; i < values.length; i++)
    if (!Number.isFinite(values[i]!))
      throw new MlaError("BAD_CHECKPOINT", `${dir}: tensor "${name}" holds ${values[i]} (element ${i}), which no factorization can take`, "the source model itself computes NaN with it: check the checkpoint (a diverged training run, an overflow when it was cast to f16, a damaged copy)");
  return values;
}
