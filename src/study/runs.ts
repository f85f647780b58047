/**
 * Which runs a study makes (its variants × latent widths) and what each one is: its name in the folder
 * and the conversion that makes it from the MHA initialization. Apart from the work, so that every
 * run's conversion is checked by convert's own checks before the first run trains.
 */
import { MlaError, refuseInert } from "../errors.js";
import { defaultRopePairs } from "../ropeSelect/strategies.js";
import { resolveSettings, type SettingsInput } from "../convert/plan.js";
import type { ModelConfig } from "../model/config.js";
import { silentLogger } from "../util/log.js";
import type { StudyOptions } from "./study.js";

export const STUDY_VARIANTS = ["mha", "mla", "mla-rope", "eg-mla"] as const;
export type StudyVariant = (typeof STUDY_VARIANTS)[number];
/** The latent widths the MLA variants are trained at when --ranks is not given. */
export const STUDY_RANKS = ["d/2", "d/4"] as const;

/** "d" → hidden (full rank); "d/2" → hidden/2; "96" → 96; checked to split evenly over the KV heads. */
export function latentWidth(spec: string, hidden: number, kvHeads: number): number {
  const s = spec.trim();
  const m = /^d(?:\/(\d+))?$/.exec(s);
  // Digits only: Number() also reads "", "0x20" and "1e2", which no one means as a width.
  if (!m && !/^\d+$/.test(s)) throw new MlaError("BAD_ARGUMENT", `--ranks ${JSON.stringify(spec)} is not d, d/N or a whole number`, `use d, d/2, d/4 (of hidden size ${hidden}) or a multiple of ${kvHeads}, comma-separated, e.g. --ranks d/2,d/4`);
  if (m?.[1] !== undefined && Number(m[1]) === 0) throw new MlaError("BAD_ARGUMENT", `--ranks ${spec} divides the hidden size by 0`, `use d, d/2, d/4 (of hidden size ${hidden}) or a multiple of ${kvHeads}`);
  const L = m ? hidden / Number(m[1] ?? 1) : Number(s);
  if (!Number.isInteger(L) || L < kvHeads || L % kvHeads !== 0)
    throw new MlaError("BAD_ARGUMENT", `--ranks ${spec} gives a latent of ${L} dims, not a positive multiple of the ${kvHeads} KV heads`, `use d, d/2, d/4 (of hidden size ${hidden}) or a multiple of ${kvHeads}`);
  return L;
}

type MlaVariant = Exclude<StudyVariant, "mha">;
/** One training run: the MHA initialization as is, or an MLA variant at latent width L per token and layer. */
export type StudyRun = { variant: "mha"; L: null } | { variant: MlaVariant; L: number };

/** The conversion that makes an MLA variant at latent width L from the MHA initialization. */
export function runSettings({ variant, L }: { variant: MlaVariant; L: number }, c: ModelConfig, gateDim: number | undefined): SettingsInput {
  const eg = variant === "eg-mla";
  return { rank: L / c.kvHeads, ropePairs: variant === "mla" ? 0 : defaultRopePairs(c.headDim), ropeStrategy: "uniform", attention: eg ? "eg-mla" : "mla", gateDim: eg ? gateDim : undefined };
}

/**
 * The runs (variant × width) the options ask for, each run's conversion checked by convert's own
 * checks before any work: a width or gate the third run's conversion would refuse must not cost the two
 * runs before it (nor the --force that a corrected command, no longer the one that started the
 * study, would then need).
 */
export function plannedRuns(o: StudyOptions, c: ModelConfig): { runs: StudyRun[]; ranks: readonly string[] } {
  if (!o.variants.length) throw new MlaError("BAD_ARGUMENT", "--variants is empty", `name some of ${STUDY_VARIANTS.join(", ")}`);
  for (const v of o.variants) if (!STUDY_VARIANTS.includes(v)) throw new MlaError("BAD_ARGUMENT", v.trim() ? `--variants: ${v} is not known` : `--variants ${o.variants.join(",")} has an empty entry`, `use ${STUDY_VARIANTS.join(", ")}, comma-separated`);
  const mla = o.variants.filter((v): v is MlaVariant => v !== "mha");
  const others = STUDY_VARIANTS.filter((v) => v !== "mha").join(", ");
  // refuseInert's policy: given (an empty list too) where no run reads it, refused naming what it needs.
  if (!mla.length) refuseInert([["--ranks", o.ranks]], "an MLA variant in --variants", "it sets the MLA variants' latent widths", `add one of ${others} to --variants`);
  if (!mla.includes("eg-mla")) refuseInert([["--gate-dim", o.gateDim]], "eg-mla in --variants", "it is EG-MLA's gate width", "add eg-mla to --variants");
  const ranks = mla.length ? (o.ranks ?? STUDY_RANKS) : [];
  if (mla.length && !ranks.length) throw new MlaError("BAD_ARGUMENT", "--ranks is empty", `name the MLA variants' latent widths, e.g. ${STUDY_RANKS.join(",")}`);
  const widths = ranks.map((r) => latentWidth(r, c.hiddenSize, c.kvHeads));
  // A variant or width named twice (mla,mla; d/2,32 at d = 64) is one run, not two identical rows.
  const runs = [...new Set(o.variants)].flatMap((v): StudyRun[] => (v === "mha" ? [{ variant: v, L: null }] : [...new Set(widths)].map((L) => ({ variant: v, L }))));
  for (const r of runs) if (r.variant !== "mha") checkRun(r, c, o.gateDim ?? undefined);
  return { runs, ranks };
}

/** A run's name in the study's folder: its row file NAME.row.json, its model NAME, its training NAME-trained. */
export const runName = (r: StudyRun) => (r.L === null ? "mha" : `${r.variant}-L${r.L}`);

/** Convert's checks of one run's conversion, whose message names convert's flags: prefixed with the run they come from. */
function checkRun(r: { variant: MlaVariant; L: number }, c: ModelConfig, gateDim: number | undefined): void {
  try {
    resolveSettings(c, runSettings(r, c, gateDim), silentLogger);
  } catch (e) {
    if (!(e instanceof MlaError)) throw e;
    // A width past what the variant can factor beside its rope keys (`d` with mla-rope or eg-mla on a
    // GQA model): said in --ranks terms, with the widest it takes, not as convert's --rank.
    const widest = /--rank \d+ is out of range/.test(e.message) ? widestRank(r, c, gateDim) : null;
    if (widest !== null)
      throw new MlaError("BAD_ARGUMENT", `--ranks: the ${r.variant} variant cannot have a latent of ${r.L} per token and layer (${r.L / c.kvHeads} per KV head) on this model: beside its rope keys it factors at most ${widest * c.kvHeads} (${widest} per KV head)`, `give ${r.variant} widths up to ${widest * c.kvHeads} (e.g. d/2), and \`d\` to the mla variant alone, whose latent can be full`);
    throw new MlaError(e.code, `the ${r.variant} variant at latent ${r.L} (${r.L / c.kvHeads} per KV head): ${e.message}`);
  }
}

/** The largest latent per KV head below r's that the variant's conversion takes (null: none). */
function widestRank(r: { variant: MlaVariant; L: number }, c: ModelConfig, gateDim: number | undefined): number | null {
  for (let k = r.L / c.kvHeads - 1; k >= 1; k--) {
    try {
      resolveSettings(c, runSettings({ variant: r.variant, L: k * c.kvHeads }, c, gateDim), silentLogger);
      return k;
    } catch {
      // narrower still
    }
  }
  return null;
}

/**
 * The widest latent per token and layer the mla-rope variant can have on this model: d where its
 * conversion takes a full-rank latent beside the rope keys (an MHA model), narrower on a GQA model,
 * whose d/2-against-d decode claim then cannot be measured (the report says so instead of asking for d).
 */
export function mlaRopeWidest(c: ModelConfig): number | undefined {
  const full = { variant: "mla-rope" as const, L: c.hiddenSize };
  try {
    resolveSettings(c, runSettings(full, c, undefined), silentLogger);
    return c.hiddenSize;
  } catch (e) {
    if (!(e instanceof MlaError)) throw e;
    // No width fits at all: the claim then asks for d as before (the study refuses such runs by name).
    const widest = widestRank(full, c, undefined);
    return widest === null ? undefined : widest * c.kvHeads;
  }
}
