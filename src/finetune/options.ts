/**
 * A fine-tune's defaults, and the checks of its options that need neither the model nor the data:
 * the trainer makes them first, and so do callers with work to do before they train (`pipeline`
 * converts and evaluates first; `study` initializes and converts), so a bad --lr does not cost them
 * that work and a flag's error reads the same from every command.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError, refuseInert } from "../errors.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import type { FinetuneOptions } from "./trainer.js";
import { parseSchedule } from "./schedule.js";
import type { OptionKinds } from "../util/optionTypes.js";

/** The defaults of FinetuneOptions, one table for the library and the CLI (`mha2mla finetune --help`). */
export const FINETUNE_DEFAULTS = {
  seq: 256,
  batch: 16,
  accum: 1,
  valFraction: 0.1,
  warmup: 0.05,
  schedule: "wsd",
  decayFraction: 0.2,
  minLrFraction: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.01,
  clip: 1.0,
  seed: 0,
  train: "all",
  temperature: 1,
  distillWeight: 0.5,
} as const;

/** The JavaScript types of FinetuneOptions (finetune's entry check). */
export const FINETUNE_KINDS: OptionKinds<FinetuneOptions> = {
  data: "string[]",
  tokenCache: "string",
  out: "string",
  force: "boolean",
  resume: "boolean",
  tokens: "number",
  fraction: "number",
  valFraction: "number",
  valTokens: "number",
  seq: "number",
  batch: "number",
  accum: "number",
  lr: "number",
  warmup: "number",
  schedule: "string",
  decayFraction: "number",
  minLrFraction: "number",
  beta1: "number",
  beta2: "number",
  eps: "number",
  weightDecay: "number",
  clip: "number",
  seed: "number",
  train: "string",
  distill: "string",
  temperature: "number",
  distillWeight: "number",
  evalEvery: "number",
  saveEvery: "number",
  saveEveryMinutes: "number",
  device: "string",
  precision: "string",
  checkpointActivations: "boolean",
  logger: "object",
  progress: "object",
  shouldStop: "function",
  onStep: "function",
  onValidation: "function",
  signal: "object",
  collective: "object",
};

function positive(name: string, v: number, integer = false): number {
  if (!Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) throw new MlaError("BAD_ARGUMENT", `--${name} ${v} must be a positive ${integer ? "integer" : "number"}`, `pass e.g. --${name} ${integer ? 16 : 0.001}`);
  return v;
}

/** Refuses `v` (named `flag`) outside `range`, written "[lo, hi)"-style: a bracket includes its end, a parenthesis does not. */
function within(flag: string, v: number, range: string, hint: string): void {
  const m = /^([[(])(\S+), (\S+)([\])])$/.exec(range)!;
  const lo = Number(m[2]), hi = m[3] === "∞" ? Infinity : Number(m[3]);
  const ok = (m[1] === "[" ? v >= lo : v > lo) && (m[4] === "]" ? v <= hi : v < hi);
  if (!ok) throw new MlaError("BAD_ARGUMENT", `${flag} ${v} is outside ${range}`, hint);
}

/** The run's shape, schedule and loss options with their defaults, each checked (a clear error names the flag). */
export function checkFinetuneOptions(o: Omit<FinetuneOptions, "data" | "out">) {
  const D = FINETUNE_DEFAULTS;
  const seq = positive("seq", o.seq ?? D.seq, true);
  if (seq < 2) throw new MlaError("BAD_ARGUMENT", `--seq ${seq} is too small`, "use at least 2 (BOS + one token)");
  const batch = positive("batch", o.batch ?? D.batch, true);
  const accum = positive("accum", o.accum ?? D.accum, true);
  if (o.tokens !== undefined) positive("tokens", o.tokens, true);
  if (o.lr !== undefined) positive("lr", o.lr);
  // 0 (or unset) turns them off; a negative or fractional step count used to act on every step.
  for (const [name, v] of [["save-every", o.saveEvery], ["eval-every", o.evalEvery]] as const)
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) throw new MlaError("BAD_ARGUMENT", `--${name} ${v} must be a whole number of steps, 0 or more`, `pass e.g. --${name} 100, or 0 for none`);
  within("--save-every-minutes", o.saveEveryMinutes ?? 0, "[0, ∞)", "minutes of training between checkpoints, e.g. 10, or 0 for none");
  // The data order's generator takes 32 bits: a fraction or a larger seed would alias another seed's order.
  const seed = o.seed ?? D.seed;
  if (!(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) throw new MlaError("BAD_ARGUMENT", `--seed ${seed} is not a whole number in [0, 2^32)`, "pass e.g. --seed 0");
  const warmup = o.warmup ?? D.warmup;
  within("--warmup", warmup, "[0, 1)", "warmup is a fraction of the steps, e.g. 0.05");
  // Checked here, not where each is used, so a pipeline or study refuses them before its first phase.
  within("--val-fraction", o.valFraction ?? D.valFraction, "[0, 1)", "e.g. 0.1 holds out the last 10% of the tokens");
  if (o.valTokens !== undefined) {
    // Fewer than 2 tokens score nothing (a window's first token is only context).
    if (!(Number.isInteger(o.valTokens) && o.valTokens >= 2)) throw new MlaError("BAD_ARGUMENT", `--val-tokens ${o.valTokens} is not a whole number of tokens ≥ 2`, "pass e.g. --val-tokens 100k, or leave it out to score the whole held-out tail");
    if ((o.valFraction ?? D.valFraction) === 0) throw new MlaError("BAD_ARGUMENT", "--val-tokens has no effect with --val-fraction 0 (no tokens are held out to score)", "give --val-fraction > 0, or leave --val-tokens out");
  }
  within("--fraction", o.fraction ?? 1, "(0, 1]", "e.g. 0.01 trains on the first 1% of the data");
  within("--decay-fraction", o.decayFraction ?? D.decayFraction, "[0, 1]", "wsd decays over this fraction of the steps, e.g. 0.2");
  // Past [0, 1] the schedule's floor turns the rate negative (gradient ascent) or above its peak.
  within("minLrFraction", o.minLrFraction ?? D.minLrFraction, "[0, 1]", "the schedule's floor as a fraction of the peak rate, e.g. 0.1");
  within("--weight-decay", o.weightDecay ?? D.weightDecay, "[0, ∞)", "e.g. 0.01, or 0 for none");
  within("--clip", o.clip ?? D.clip, "[0, ∞)", "the global gradient-norm bound, e.g. 1, or 0 for none");
  within("beta1", o.beta1 ?? D.beta1, "[0, 1)", "AdamW's first-moment decay, e.g. 0.9");
  within("beta2", o.beta2 ?? D.beta2, "[0, 1)", "AdamW's second-moment decay, e.g. 0.95");
  within("eps", o.eps ?? D.eps, "(0, ∞)", "AdamW's denominator floor, e.g. 1e-8");
  // Settings of distillation without a teacher would be dropped unseen (refuseInert's policy).
  if (!o.distill) refuseInert([["--distill-weight", o.distillWeight], ["--temperature", o.temperature]], "--distill TEACHER", "settings of the distillation from a teacher model");
  const distillWeight = o.distill ? (o.distillWeight ?? D.distillWeight) : 0;
  const temperature = positive("temperature", o.temperature ?? D.temperature);
  within("--distill-weight", distillWeight, "[0, 1]", "0 = cross-entropy only, 1 = distillation only");
  const schedule = parseSchedule(o.schedule ?? D.schedule);
  // A setting of another schedule would be dropped unseen (and still refuse a --resume that changes it).
  if (schedule !== "wsd") refuseInert([["--decay-fraction", o.decayFraction]], "--schedule wsd", "the fraction of the steps wsd spends decaying");
  // minLrFraction has no command-line flag: named as the library option, as its range check names it.
  if (schedule !== "cosine") refuseInert([["minLrFraction", o.minLrFraction]], "schedule: \"cosine\"", "the floor of the cosine schedule");
  const trainWhat = o.train ?? D.train;
  if (trainWhat !== "attention" && trainWhat !== "all") throw new MlaError("BAD_ARGUMENT", `--train ${String(trainWhat)} is not known`, "use attention (the attention weights only) or all");
  return { seq, batch, accum, warmup, trainWhat, distillWeight, temperature };
}

/**
 * The token of each id in `dir`'s tokenizer.json (its model's vocabulary, then the added tokens), or
 * null where the folder has none or it cannot be read (loading the model reports that).
 */
function tokensById(dir: string): Map<number, string> | null {
  let tj: { model?: { vocab?: unknown }; added_tokens?: unknown };
  try {
    tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as typeof tj;
  } catch {
    return null;
  }
  const byId = new Map<number, string>();
  const vocab = tj?.model?.vocab;
  // BPE and WordPiece: {token: id}; Unigram: [[token, score], …] by id.
  if (Array.isArray(vocab)) vocab.forEach((entry, id) => byId.set(id, String(Array.isArray(entry) ? entry[0] : entry)));
  else if (vocab && typeof vocab === "object") for (const [token, id] of Object.entries(vocab)) if (typeof id === "number") byId.set(id, token);
  if (Array.isArray(tj.added_tokens)) for (const t of tj.added_tokens as { id?: unknown; content?: unknown }[]) if (typeof t?.id === "number") byId.set(t.id, String(t.content));
  return byId.size ? byId : null;
}

/**
 * Refuses a --distill teacher that cannot be found or whose vocabulary is not the student's (that of
 * the model in `studentDir`, `vocabSize` ids): by its config's size, then, where both folders have a
 * tokenizer.json, token by token. Llama-2 and Mistral-7B both have 32000 ids, for other tokens: the
 * KL term would then pull each id toward another token's probability, unseen.
 */
export function checkTeacher(distill: string, vocabSize: number, studentDir?: string): void {
  const teacherDir = resolveModel(distill).dir;
  const teacher = readHfConfig(teacherDir);
  const hint = "distill from a model with the same tokenizer (usually the original of the converted model)";
  if (teacher.vocabSize !== vocabSize) throw new MlaError("BAD_ARGUMENT", `--distill ${distill} has a vocabulary of ${teacher.vocabSize}, the student ${vocabSize}`, hint);
  if (studentDir === undefined) return;
  const [theirs, ours] = [tokensById(teacherDir), tokensById(studentDir)];
  if (!theirs || !ours) return;
  for (let id = 0; id < vocabSize; id++) {
    const [a, b] = [theirs.get(id), ours.get(id)];
    if (a !== b) throw new MlaError("BAD_ARGUMENT", `--distill ${distill} has another vocabulary than the student, of the same size (${vocabSize}): id ${id} is ${a === undefined ? "no token" : JSON.stringify(a)} in the teacher's tokenizer.json, ${b === undefined ? "no token" : JSON.stringify(b)} in the student's`, hint);
  }
}
