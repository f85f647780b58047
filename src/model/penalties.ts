/**
 * Penalties and biases on a row of logits before the next token is picked, as vLLM applies the
 * OpenAI fields (and HF's `repetition_penalty`): first the bias of each listed token, then the
 * repetition penalty on every token the prompt or the generated text holds (a positive logit divided
 * by it, a negative one multiplied), then the frequency penalty (times the token's count in the
 * generated text) and the presence penalty (once per token generated at all) subtracted. Log-
 * probabilities are reported from the logits before them, as vLLM reports them by default.
 */
import { MlaError } from "../errors.js";
import { describe } from "../util/optionTypes.js";
import type { FloatArray } from "../tensor/tensor.js";

export interface PenaltyOptions {
  /** Subtracted from the logit of every token generated so far, once (OpenAI's range −2 … 2; default 0). */
  presencePenalty?: number;
  /** Subtracted from the logit of every token generated so far, times its count (−2 … 2; default 0). */
  frequencyPenalty?: number;
  /** > 1 makes tokens of the prompt and of the generated text less likely, < 1 more (default 1: none). */
  repetitionPenalty?: number;
  /** Added to the logits of these token ids (−100 … 100: from banning to forcing). */
  logitBias?: ReadonlyMap<number, number>;
}

/** The penalty options checked against a vocabulary of `vocabSize` ids; `names` says how a refusal names each (CLI flag or request field). */
export function checkPenalties(o: PenaltyOptions, vocabSize: number, names: Record<keyof PenaltyOptions, string>): PenaltyOptions {
  if (typeof o !== "object" || o === null) throw new MlaError("BAD_ARGUMENT", `checkPenalties(): the options are ${describe(o)}, not an object`, "pass e.g. { presencePenalty: 0.5 }, or {} for none");
  const range = (key: "presencePenalty" | "frequencyPenalty") => {
    const v = o[key];
    if (v !== undefined && !(Number.isFinite(v) && v >= -2 && v <= 2)) throw new MlaError("BAD_ARGUMENT", `${names[key]} ${v} is not a number from -2 to 2`, `pass e.g. 0.5 to make repeated tokens less likely, or leave it out (0)`);
  };
  range("presencePenalty");
  range("frequencyPenalty");
  const r = o.repetitionPenalty;
  if (r !== undefined && !(Number.isFinite(r) && r > 0 && r <= 100)) throw new MlaError("BAD_ARGUMENT", `${names.repetitionPenalty} ${r} is not a number above 0 and at most 100`, "pass e.g. 1.1 to make tokens already seen less likely, or 1 (none)");
  for (const [id, bias] of o.logitBias ?? []) {
    // A Map built from an object's entries is keyed by strings: "5" was refused as "token id 5, outside the vocabulary of 512".
    if (typeof id !== "number") throw new MlaError("BAD_ARGUMENT", `${names.logitBias} names token id ${describe(id)}, not a number`, "key it by numbers: new Map([[50256, -100]]), or new Map(Object.entries(o).map(([k, v]) => [Number(k), v]))");
    if (typeof bias !== "number") throw new MlaError("BAD_ARGUMENT", `${names.logitBias} gives token ${id} the bias ${describe(bias)}, not a number`, "give each token a bias from -100 to 100");
    if (!(Number.isInteger(id) && id >= 0 && id < vocabSize)) throw new MlaError("BAD_ARGUMENT", `${names.logitBias} names token id ${id}, outside the vocabulary of ${vocabSize}`, "use ids from the model's tokenizer (/tokenize gives them)");
    if (!(Number.isFinite(bias) && bias >= -100 && bias <= 100)) throw new MlaError("BAD_ARGUMENT", `${names.logitBias} gives token ${id} the bias ${bias}, outside -100 … 100`, "-100 bans a token, 100 forces it, values between shift its odds");
  }
  return o;
}

/** The names checkPenalties gives the options when a script builds Penalties itself. */
const OWN_NAMES: Record<keyof PenaltyOptions, string> = { presencePenalty: "Penalties' presencePenalty", frequencyPenalty: "Penalties' frequencyPenalty", repetitionPenalty: "Penalties' repetitionPenalty", logitBias: "Penalties' logitBias" };

/**
 * Penalties' arguments, once per sequence (not per token): no options failed as "reading
 * 'presencePenalty'", a NaN penalty turned the generated tokens' logits NaN. The ids of logitBias are
 * checked against the vocabulary where the caller knows it (generate, serve); here only their kind.
 */
function checkPenaltyArgs(prompt: unknown, o: PenaltyOptions): void {
  if (!Array.isArray(prompt) && !(ArrayBuffer.isView(prompt) && !(prompt instanceof DataView))) throw new MlaError("BAD_ARGUMENT", `Penalties: the prompt is ${describe(prompt)}, not an array of token ids`, "pass the prompt's token ids, e.g. Penalties.of([1, 450, 2], { repetitionPenalty: 1.1 })");
  if (typeof o !== "object" || o === null) throw new MlaError("BAD_ARGUMENT", `Penalties: the options are ${describe(o)}, not an object`, "pass e.g. { repetitionPenalty: 1.1 }, or {} for none");
  if (o.logitBias !== undefined && !(o.logitBias instanceof Map)) throw new MlaError("BAD_ARGUMENT", `Penalties' logitBias is ${describe(o.logitBias)}, not a Map`, "pass new Map([[tokenId, bias], …])");
  checkPenalties(o, Infinity, OWN_NAMES);
}

/** What of() passes its constructor: the arguments are checked already (a script's `new` has no such token). */
const CHECKED: unique symbol = Symbol("Penalties' arguments checked");

/** One sequence's penalties: the tokens it has seen, and how often it generated each. */
export class Penalties {
  private readonly seen: Set<number>;
  private readonly counts = new Map<number, number>();
  /** Whether the repetition penalty applies (then `seen` is kept). */
  private readonly repeats: boolean;

  private constructor(prompt: readonly number[], private readonly o: PenaltyOptions, checked?: typeof CHECKED) {
    // `new` from a script skips of(): the same checks.
    if (checked !== CHECKED) checkPenaltyArgs(prompt, o);
    this.repeats = (o.repetitionPenalty ?? 1) !== 1;
    this.seen = new Set(this.repeats ? prompt : []);
  }

  /** The penalties of a sequence continuing `prompt`, or null where the options change nothing. */
  static of(prompt: readonly number[], o: PenaltyOptions): Penalties | null {
    checkPenaltyArgs(prompt, o);
    const active = (o.presencePenalty ?? 0) !== 0 || (o.frequencyPenalty ?? 0) !== 0 || (o.repetitionPenalty ?? 1) !== 1 || (o.logitBias?.size ?? 0) > 0;
    return active ? new Penalties(prompt, o, CHECKED) : null;
  }

  /** Counts a generated token. */
  add(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    if (this.repeats) this.seen.add(id);
  }

  /** A copy of `logits` [V] with the bias and the penalties applied. */
  apply(logits: FloatArray): FloatArray {
    const out = logits.slice();
    for (const [id, bias] of this.o.logitBias ?? []) out[id] = out[id]! + bias;
    const r = this.o.repetitionPenalty ?? 1;
    if (this.repeats) for (const id of this.seen) out[id] = out[id]! > 0 ? out[id]! / r : out[id]! * r;
    const f = this.o.frequencyPenalty ?? 0, p = this.o.presencePenalty ?? 0;
    if (f !== 0 || p !== 0) for (const [id, n] of this.counts) out[id] = out[id]! - f * n - p;
    return out;
  }
}
