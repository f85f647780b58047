/**
 * The `mha2mla` section of an MLA model's config.json (docs/formats.md), read and written here only.
 * A uniform conversion writes rope_pairs, rank and latent_dim as numbers (format_version 1, as every
 * release has); a per-layer one (`convert --kv-split per-layer`) writes them as arrays, one entry per
 * layer, under format_version 2, so that a reader that only knows version 1 refuses it by its version
 * rather than misreading an array. This reader takes either form of each field in either version.
 */
import { MlaError } from "../errors.js";
import { latentWidth, MlaAttention, MlaSplit, uniformSplit } from "../model/config.js";

type Raw = Record<string, unknown>;

/** What the section records besides the per-layer shapes. */
export interface MlaSectionSettings {
  ropeStrategy: string;
  ropeDisjoint: boolean;
  svdInit: string;
}

/** The per-layer shapes as the section writes them: one number when every layer has the same split, else one per layer. */
export function splitFields(a: MlaAttention): { rope_pairs: number | number[]; rank: number | number[]; latent_dim: number | number[] } {
  const uniform = uniformSplit(a);
  const field = (f: (x: MlaSplit) => number) => (uniform ? f(uniform) : a.splits.map(f));
  return { rope_pairs: field((x) => x.ropePairs), rank: field((x) => x.rank), latent_dim: field((x) => x.latentDim) };
}

/** The section for a converted model (key order as format_version 1 has always had it). */
export function mlaSection(a: MlaAttention, s: MlaSectionSettings): Raw {
  const f = splitFields(a);
  return {
    format_version: uniformSplit(a) ? 1 : 2,
    rope_pairs: f.rope_pairs,
    rope_strategy: s.ropeStrategy,
    ...(s.ropeDisjoint ? { rope_disjoint: true } : {}),
    rank: f.rank,
    latent_dim: f.latent_dim,
    svd: a.svd,
    svd_init: s.svdInit,
    ...(a.gateDim > 0 ? { gate_dim: a.gateDim } : {}),
    selection: a.selection,
  };
}

/** The model's shape the section is checked against. */
export interface MlaSectionShape {
  layers: number;
  kvHeads: number;
  headDim: number;
}

/** Reads the section of config.json `file` (absent = null: plain MHA/GQA); every error names the field and the layer. */
export function parseMlaSection(m: unknown, file: string, shape: MlaSectionShape): MlaAttention | null {
  if (m === undefined || m === null) return null;
  const { layers, kvHeads, headDim } = shape;
  const half = headDim / 2;
  const bad = (what: string, hint = "the mha2mla section is written by `mha2mla convert`; re-run the conversion") => new MlaError("BAD_CONFIG", `${file}: mha2mla.${what}`, hint);
  const r = m as Raw;
  if (r["format_version"] !== 1 && r["format_version"] !== 2) throw bad(`format_version is ${JSON.stringify(r["format_version"])}, this version reads 1 and 2`, "convert again with this version of mha2mla, or read the model with the version that wrote it");
  const svd = r["svd"];
  if (svd !== "joint" && svd !== "split") throw bad(`svd is ${JSON.stringify(svd)}, expected "joint" or "split"`);
  const perLayer = (key: string, ok: (v: unknown) => boolean, expected: string): number[] => {
    const v = r[key];
    if (!Array.isArray(v)) {
      if (!ok(v)) throw bad(`${key} ${JSON.stringify(v)} is not ${expected}`);
      return Array.from({ length: layers }, () => v as number);
    }
    if (v.length !== layers) throw bad(`${key} has ${v.length} entries, the model has ${layers} layers`, `a per-layer ${key} holds one entry per layer (num_hidden_layers); re-run the conversion`);
    v.forEach((x, l) => {
      if (!ok(x)) throw bad(`${key}[${l}] ${JSON.stringify(x)} is not ${expected}`);
    });
    return v as number[];
  };
  const R = perLayer("rope_pairs", (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= half, `in 0…${half}`);
  const rank = perLayer("rank", (v) => Number.isInteger(v) && (v as number) >= 1, "a positive integer");
  const L = perLayer("latent_dim", (v) => Number.isInteger(v), "an integer");
  L.forEach((x, l) => {
    const want = latentWidth(rank[l]!, kvHeads, svd);
    const at = Array.isArray(r["latent_dim"]) ? `[${l}]` : "";
    if (x !== want) throw bad(`latent_dim${at} ${x} disagrees with rank ${rank[l]} × ${kvHeads} KV heads (${svd}): expected ${want}`);
  });
  const sel = r["selection"];
  if (!Array.isArray(sel) || sel.length !== layers) throw bad(`selection is not [${layers} layers][${kvHeads} KV heads][rope pairs]`);
  sel.forEach((heads, l) => {
    const ascending = (h: unknown) => Array.isArray(h) && h.length === R[l] && h.every((p, i) => Number.isInteger(p) && p >= 0 && p < half && (i === 0 || p > h[i - 1]));
    if (!Array.isArray(heads) || heads.length !== kvHeads || !heads.every(ascending)) throw bad(`selection[${l}] is not [${kvHeads} KV heads][${R[l]} ascending pair indices < ${half}] (rope_pairs of layer ${l} is ${R[l]})`);
  });
  const gate = r["gate_dim"] ?? 0;
  if (!Number.isInteger(gate) || (gate as number) < 0) throw bad(`gate_dim ${JSON.stringify(gate)} is not a non-negative integer`);
  return { kind: "mla", splits: R.map((ropePairs, l) => ({ ropePairs, rank: rank[l]!, latentDim: L[l]! })), selection: sel as number[][][], svd, gateDim: gate as number };
}
