/** The conversion flags shared by `convert` and `pipeline`, and their mapping to library settings. */
import type { Argv } from "yargs";
import { DEFAULT_GATE_DIM, refuseInertSettings, type SettingsInput } from "../convert/plan.js";
import { parseStrategy, ROPE_STRATEGIES } from "../ropeSelect/strategies.js";
import { KV_SPLIT_MODES, KvSplitMode } from "../convert/kvSplit.js";
import { MlaError } from "../errors.js";
import { DEFAULT_CALIB_LEN, DEFAULT_CALIB_SAMPLES } from "../ropeSelect/calibrate.js";

/** "2,4,6" → [2, 4, 6]; anything else is refused with the value that failed. */
function parsePairList(list: string): number[] {
  const items = String(list).split(",").map((x) => x.trim());
  const bad = items.find((x) => !/^\d+$/.test(x));
  if (bad !== undefined) throw new MlaError("BAD_ARGUMENT", `--kv-split-pairs ${list}: "${bad}" is not a whole number`, "list rope pair counts separated by commas, e.g. --kv-split-pairs 2,4,6,8");
  return items.map(Number);
}

export interface ConversionArgs {
  rank: number;
  "rope-pairs"?: number;
  "rope-strategy"?: string;
  "rope-disjoint"?: boolean;
  svd?: "joint" | "split";
  "svd-init": "weights" | "activations";
  "balance-kv"?: boolean;
  "refit-output": boolean;
  calib?: string;
  "calib-samples"?: number;
  "calib-len"?: number;
  attention?: "mla" | "eg-mla";
  "gate-dim"?: number;
  "kv-split"?: KvSplitMode;
  "kv-split-pairs"?: string;
}

export function withConversionOptions<T>(y: Argv<T>) {
  return y
    .option("rank", { type: "number", demandOption: true, describe: "latent dims per KV head (the paper's d_kv); the cache holds rank × KV heads latent dims (twice that with --svd split: a key latent and a value latent of rank each)" })
    .option("rope-pairs", { type: "number", describe: "RoPE frequency pairs kept per KV head (default head_dim/16 rounded down, at least 1)" })
    .option("rope-strategy", { type: "string", choices: ROPE_STRATEGIES as unknown as string[], describe: "which pairs keep RoPE (default 2-norm with --calib, else uniform)" })
    // No yargs defaults for --rope-disjoint, --svd, --attention and --kv-split: --format deepseek refuses them given (either way), so given must differ from defaulted.
    .option("rope-disjoint", { type: "boolean", describe: "no RoPE frequency kept by two KV heads of a layer (needs KV heads × rope pairs ≤ head_dim/2): the result can then be exported exactly with `export --format deepseek`" })
    .option("svd", { choices: ["joint", "split"] as const, describe: "one SVD of [keys; values] (joint, the default: one latent of --rank per KV head) or one each (split: a key and a value latent of --rank each, twice the cache)" })
    .option("svd-init", { choices: ["weights", "activations"] as const, default: "weights" as const, describe: "factor the weights, or the weights whitened by the calibration activations" })
    // No yargs default: given with --svd split it is refused (either way), so given must differ from defaulted.
    .option("balance-kv", { type: "boolean", describe: "scale keys against values (equal mean energy) before the joint SVD, undone in the up-projection (TransMLA's BKV; on by default with --svd joint); --no-balance-kv for the paper's plain SVD" })
    .option("refit-output", { type: "boolean", default: false, describe: "after factoring, solve each layer's o_proj again by least squares so the converted attention reproduces the original's output on the calibration text (needs --calib; the KV cache is unchanged). Best for a model used as converted: after a recovery fine-tune it ends slightly behind (docs/benchmarks.md)" })
    .option("calib", { type: "string", describe: "calibration text for 2-norm selection, activation-aware SVD, --refit-output and the kv_a_layernorm fit of --format deepseek --no-attention-bias" })
    // No yargs defaults: given without --calib they are refused, so given must differ from defaulted.
    .option("calib-samples", { type: "number", describe: `calibration windows of --calib (default ${DEFAULT_CALIB_SAMPLES}, or as many as the text holds)` })
    .option("calib-len", { type: "number", describe: `tokens per calibration window of --calib, BOS included (default ${DEFAULT_CALIB_LEN})` })
    .option("attention", { choices: ["mla", "eg-mla"] as const, describe: "mla (default): MHA2MLA; eg-mla: MLA whose latent is gated by a per-layer token-embedding table (EG-MLA), initialized so the model starts equal to the mla conversion (same cache size)" })
    .option("gate-dim", { type: "number", describe: `eg-mla: width of each layer's gate embedding (default ${DEFAULT_GATE_DIM})` })
    .option("kv-split", { choices: KV_SPLIT_MODES, describe: "how each layer splits the cache budget of --rope-pairs/--rank (2R + rank values per KV head and token) between rope pairs and latent dims: uniform (the default: the same everywhere), or per-layer: each layer takes the equal-bytes split (R', rank') whose converted attention best reproduces the original's on --calib (needs --calib; the total cache is the uniform one's; `export --format deepseek` cannot write the result)" })
    .option("kv-split-pairs", { type: "string", describe: "per-layer: the rope pairs R' to try, comma-separated (default R + k·max(1, round(R/2)): 2,4,6,8,10 for R 4 and rank 16, as far as the budget allows)" });
}

/**
 * The conversion flags as library settings. For our format the defaults of --rope-disjoint, --svd and
 * --attention are filled in, as yargs did, so a pipeline started then keeps its fingerprint (and
 * resumes); for --format deepseek, which decides those itself, they stay as given, for it to refuse.
 */
export function conversionSettings(a: ConversionArgs, format: "mha2mla" | "deepseek"): SettingsInput {
  const ours = format !== "deepseek";
  // Before the model is resolved: the library's own check of the flags that would do nothing beside the others.
  refuseInertSettings({ rank: a.rank, svd: a.svd, balanceKv: a["balance-kv"], calib: a.calib, calibSamples: a["calib-samples"], calibLen: a["calib-len"] });
  return {
    rank: a.rank,
    ropePairs: a["rope-pairs"],
    ropeStrategy: a["rope-strategy"] ? parseStrategy(a["rope-strategy"]) : undefined,
    ropeDisjoint: ours ? (a["rope-disjoint"] ?? false) : a["rope-disjoint"],
    svd: ours ? (a.svd ?? "joint") : a.svd,
    svdInit: a["svd-init"],
    // Only as given: a pipeline's run identity counts an absent one as the default (true) under the joint SVD, so runs the CLI started passing true resume.
    balanceKv: a["balance-kv"],
    refitOutput: a["refit-output"],
    calib: a.calib,
    // With --calib the defaults filled in, as yargs did, so a pipeline started then keeps its fingerprint
    // (and resumes). Without it none: the library refuses windows without text, and a pipeline's run
    // identity leaves them out there (a run started with yargs's 32/256 resumes from its recorded settings).
    calibSamples: a.calib === undefined ? undefined : (a["calib-samples"] ?? DEFAULT_CALIB_SAMPLES),
    calibLen: a.calib === undefined ? undefined : (a["calib-len"] ?? DEFAULT_CALIB_LEN),
    attention: ours ? (a.attention ?? "mla") : a.attention,
    gateDim: a["gate-dim"],
    // Left out when uniform in our format, so a pipeline started before --kv-split existed keeps its fingerprint (and resumes).
    kvSplit: ours && a["kv-split"] === "uniform" ? undefined : a["kv-split"],
    kvSplitPairs: a["kv-split-pairs"] === undefined ? undefined : parsePairList(a["kv-split-pairs"]),
  };
}
