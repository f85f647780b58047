/**
 * Replacing some tensors of a written checkpoint in place (same names, shapes and dtypes), for the
 * passes that fit weights after a conversion has written its folder: the output refit
 * (src/convert/refitOutput.ts) and the bias-free deepseek export's kv_a_layernorm fit
 * (src/deepseek/latentNorm.ts). Both need the written model loaded to measure it, so they cannot
 * know the values while the tensors stream out.
 */
import fs from "node:fs";
import path from "node:path";
import { Checkpoint, INDEX_FILE, SINGLE_FILE } from "./checkpoint.js";
import { encodeFromF32 } from "./dtype.js";
import { writeSafetensorsSync } from "./safetensors.js";

/**
 * Rewrites the checkpoint in `dir` with the tensors of `replaced` (by full name; encoded in their
 * stored dtype): the single model.safetensors, or each shard that holds one of them (one shard in
 * memory at a time; the index stays valid, as names, shapes and dtypes do not change). Each file is
 * written beside itself and renamed over it.
 */
export function rewriteTensors(dir: string, replaced: ReadonlyMap<string, Float32Array>): void {
  const indexPath = path.join(dir, INDEX_FILE);
  const ck = Checkpoint.open(dir);
  try {
    const byFile = new Map<string, string[]>();
    const map: Record<string, string> = fs.existsSync(indexPath) ? (JSON.parse(fs.readFileSync(indexPath, "utf8")) as { weight_map: Record<string, string> }).weight_map : Object.fromEntries(ck.names().map((n) => [n, SINGLE_FILE]));
    for (const [name, file] of Object.entries(map)) byFile.set(file, [...(byFile.get(file) ?? []), name]);
    for (const [file, names] of byFile) {
      if (!names.some((n) => replaced.has(n))) continue;
      const tensors = names.map((name) => {
        const e = ck.entry(name);
        const w = replaced.get(name);
        return { name, dtype: e.dtype, shape: e.shape, data: w ? encodeFromF32(e.dtype, w) : ck.readBytes(name).slice() };
      });
      const target = path.join(dir, file);
      const tmp = `${target}.rewrite-${process.pid}`;
      writeSafetensorsSync(tmp, tensors, { format: "pt" });
      fs.renameSync(tmp, target);
    }
  } finally {
    ck.close();
  }
}
