/**
 * A freshly initialized MHA model with the config and tokenizer of another (`study --like DIR`): the
 * starting point that every variant of a from-scratch study shares. GPT-2/Llama-style init: every
 * matrix N(0, 0.02²), the projections that write into the residual stream (o_proj, down_proj) scaled
 * by 1/√(2·layers), norms 1, biases 0. Float32, seeded, independent of chunking.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";
import { copyModelSideFiles, SINGLE_FILE } from "../io/checkpoint.js";
import { readHfConfig } from "../io/hfConfig.js";
import { writeSafetensorsSync } from "../io/safetensors.js";
import { expectedTensors } from "../model/weights.js";
import { Rng } from "../finetune/rng.js";
import { makeDirs } from "../io/makeDirs.js";

/** Standard normal samples (Box–Muller) from a seeded generator. */
function normals(n: number, std: number, rng: Rng): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rng.next(), 1e-12), v = rng.next();
    const r = std * Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** The config of `likeDir` as written, refused when it is an MLA checkpoint (the study builds its own MLA variants from an MHA shape). */
export function likeConfig(likeDir: string): Record<string, unknown> {
  const raw = JSON.parse(fs.readFileSync(path.join(likeDir, "config.json"), "utf8")) as Record<string, unknown>;
  if (raw["mha2mla"] || raw["model_type"] === "deepseek_v3")
    throw new MlaError("BAD_ARGUMENT", `${likeDir} is an MLA checkpoint`, "pass the original MHA/GQA model to --like; the study builds its own MLA variants");
  // The study trains on text through --like's tokenizer: missing, it would be named by a copy inside --out.
  if (!fs.existsSync(path.join(likeDir, "tokenizer.json")))
    throw new MlaError("BAD_ARGUMENT", `--like ${likeDir} has no tokenizer.json`, "pass a model folder with its tokenizer (the study tokenizes --data with it); a synth folder has none: copy one in");
  return raw;
}

/** Writes the initialized model to `out` (which must not exist). */
export function initFromScratch(likeDir: string, out: string, seed: number): void {
  const raw = likeConfig(likeDir);
  makeDirs(out, "the output folder");
  fs.writeFileSync(path.join(out, "config.json"), JSON.stringify(raw, null, 2) + "\n");
  copyModelSideFiles(likeDir, out);
  const c = readHfConfig(out);
  const rng = new Rng(seed);
  const residual = 0.02 / Math.sqrt(2 * c.layers);
  const tensors = expectedTensors(c).map((t) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const values = /norm\.weight$/.test(t.name) ? new Float32Array(n).fill(1) : /\.bias$/.test(t.name) ? new Float32Array(n) : normals(n, /(o_proj|down_proj)\.weight$/.test(t.name) ? residual : 0.02, rng);
    return { name: t.name, shape: t.shape, dtype: "F32" as const, data: new Uint8Array(values.buffer) };
  });
  writeSafetensorsSync(path.join(out, SINGLE_FILE), tensors, { format: "pt" });
}
