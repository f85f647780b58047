/**
 * Benchmark tasks: ARC-Easy, ARC-Challenge, PIQA, HellaSwag (multiple choice, acc and acc_norm) and
 * LAMBADA (last-word accuracy and perplexity). Deterministic; each result keeps its per-item
 * predictions so they can be compared with a reference implementation item by item.
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../../errors.js";
import type { LlamaModel } from "../../model/llama.js";
import { checkIdsInVocab, type TextTokenizer } from "../../io/tokenizer.js";
import { Progress, ProgressSink } from "../../util/progress.js";
import { nextTurn } from "../../util/abort.js";
import { requireCount } from "../../util/counts.js";
import { ChoiceItem, LambadaItem, parseHellaswag, parseInstructionChoices, parseLambada } from "./items.js";
import { requireBos } from "../perplexity.js";
import { choiceLoglikelihoods, loglikelihood } from "./score.js";
import type { KvCacheDtype } from "../../model/kvQuant.js";

export const TASKS = {
  "arc-easy": { file: "ARC-Easy.test.json", kind: "choice" as const, load: (f: string, n?: number) => parseInstructionChoices(f, "answer", n) },
  "arc-challenge": { file: "ARC-Challenge.test.json", kind: "choice" as const, load: (f: string, n?: number) => parseInstructionChoices(f, "answer", n) },
  piqa: { file: "piqa.test.json", kind: "choice" as const, load: (f: string, n?: number) => parseInstructionChoices(f, "solution", n) },
  hellaswag: { file: "hellaswag_val_full.txt.bz2", kind: "choice" as const, load: (f: string, n?: number) => parseHellaswag(f, n) },
  lambada: { file: "lambada_test.jsonl", kind: "lambada" as const, load: null },
};
export type TaskName = keyof typeof TASKS;

export interface TaskResult {
  task: TaskName;
  n: number;
  metrics: Record<string, number>;
  /** Per item: chosen index by acc and by acc_norm (choice tasks), or greedy hit and log-prob (lambada). */
  predictions: { acc?: number; acc_norm?: number; greedy?: boolean; logprob?: number; scores?: number[] }[];
  /** Items whose scoring ran past the model's positions (scored as they are; lm-eval cuts them from the left), and the longest. */
  pastPositions: { items: number; longest: number };
}

/** Of the positions each item's scoring used: how many passed `max`, and the most any used. */
function pastPositions(used: readonly number[], max: number): TaskResult["pastPositions"] {
  return { items: used.filter((n) => n > max).length, longest: used.reduce((a, n) => Math.max(a, n), 0) };
}

export function parseTaskNames(list: string): TaskName[] {
  if (typeof list !== "string") throw new MlaError("BAD_ARGUMENT", `parseTaskNames: the task list is ${Array.isArray(list) ? "an array" : list === null ? "null" : typeof list}, not a string`, `pass the names comma-separated, as --tasks takes them, e.g. "arc-easy,piqa"`);
  // A task named twice is scored once (and shown once).
  const names = [...new Set(list.split(",").map((s) => s.trim()).filter(Boolean))];
  if (names.length === 0) throw new MlaError("BAD_ARGUMENT", "--tasks is empty", `name some of ${Object.keys(TASKS).join(", ")}`);
  names.forEach(checkTaskName);
  return names as TaskName[];
}

export function checkTaskName(name: string): void {
  if (!Object.hasOwn(TASKS, name)) throw new MlaError("BAD_ARGUMENT", `task "${name}" is not known`, `known tasks: ${Object.keys(TASKS).join(", ")}`);
}

/** Where task files are looked for when --data-dir is not given. */
export function defaultDataDir(root: string): string | null {
  const env = process.env["MHA2MLA_EVAL_DATA"];
  if (env && !fs.existsSync(env)) throw new MlaError("NOT_FOUND", `MHA2MLA_EVAL_DATA=${env} does not exist`, "point it at the folder with ARC-*.test.json, piqa.test.json, hellaswag_val_full.txt.bz2, lambada_test.jsonl, or unset it");
  const candidates = [env, path.resolve(root, "..", "shared", "data", "eval")].filter((x): x is string => !!x);
  return candidates.find((d) => fs.existsSync(d)) ?? null;
}

/** Standard error of the mean of 0/1 outcomes (sample variance, as lm-eval). */
function stderr(xs: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const m = xs.reduce((a, b) => a + b, 0) / n;
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (n - 1) / n);
}

/**
 * The acc_norm pick: the argmax of each choice's log-likelihood divided by its length in characters,
 * its leading space included (DESIGN.md). Characters as Python's len() counts them (code points): a
 * character outside the BMP (an emoji) is one, not the two UTF-16 units of a string's .length.
 */
export function accNormPick(scores: readonly number[], choices: readonly string[]): number {
  return argmax(scores.map((s, i) => s / [...choices[i]!].length));
}

function argmax(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/** The path of `task`'s file in `dataDir`, refused when it is not there (evaluate checks every task's before scoring the first). */
export function taskFile(dataDir: string, task: TaskName): string {
  const file = path.join(dataDir, TASKS[task].file);
  if (!fs.existsSync(file)) throw new MlaError("NOT_FOUND", `task file ${file} (${task}) does not exist`, "pass --data-dir with the task files (ARC-*.test.json, piqa.test.json, hellaswag_val_full.txt.bz2, lambada_test.jsonl)");
  return file;
}

/**
 * `task`'s first `limit` items from its file in `dataDir`, parsed. evaluate() loads every task's before
 * it scores anything (a truncated or corrupt file is refused then, not after hours of the tasks before it).
 */
export function loadTaskItems(task: TaskName, dataDir: string, limit?: number): TaskItems {
  const spec = TASKS[task];
  const file = taskFile(dataDir, task);
  return spec.kind === "lambada" ? { kind: "lambada", items: parseLambada(file, limit) } : { kind: "choice", items: spec.load(file, limit) };
}

export type TaskItems = { kind: "lambada"; items: LambadaItem[] } | { kind: "choice"; items: ChoiceItem[] };

/**
 * Refuses, before anything is scored, a task item whose ids as its scoring encodes them (context + each
 * continuation) pass the model's vocabulary of `vocabSize` (config.json in `dir`): the embedding found it
 * only while scoring (after a pipeline's conversion, or an eval's perplexity), naming no file. Only a
 * tokenizer with ids past the vocabulary can give one: with any other, nothing is encoded here.
 */
export function checkTaskIds(tok: TextTokenizer, loaded: { dataDir: string | null; items: ReadonlyMap<TaskName, TaskItems> }, vocabSize: number, dir: string): void {
  if (tok.vocabSize <= vocabSize) return;
  for (const [task, { items }] of loaded.items)
    for (const it of items)
      for (const continuation of "target" in it ? [it.target] : it.choices)
        checkIdsInVocab(tok.encode(it.context + continuation), vocabSize, `${taskFile(loaded.dataDir!, task)} item ${it.index}`, dir);
}

/** Scores `task`'s first `limit` items; `kvCache`: as a decode cache of that type serves keys/values (default f32, exact). */
export async function runTask(model: LlamaModel, tok: TextTokenizer, task: TaskName, dataDir: string, limit?: number, progress?: ProgressSink | null, signal?: AbortSignal, kvCache?: KvCacheDtype, loaded?: TaskItems): Promise<TaskResult> {
  requireCount("--limit", limit);
  // Every item starts with BOS: a model without one would silently score after token id 1.
  requireBos(model.config.bosTokenId);
  const data = loaded ?? loadTaskItems(task, dataDir, limit);
  const used: number[] = []; // positions each item's scoring used
  if (data.kind === "lambada") {
    const items = data.items;
    const bar = new Progress(task, items.length, "items", progress);
    const predictions: TaskResult["predictions"] = [];
    for (const it of items) {
      const r = loglikelihood(model, tok, it.context, it.target, kvCache);
      used.push(r.positions);
      predictions.push({ greedy: r.greedy, logprob: r.logprob });
      bar.tick();
      await nextTurn(signal);
    }
    const hits = predictions.map((p) => (p.greedy ? 1 : 0));
    const meanLp = predictions.reduce((a, p) => a + p.logprob!, 0) / Math.max(items.length, 1);
    return { task, n: items.length, metrics: { acc: hits.reduce((a: number, b) => a + b, 0) / Math.max(items.length, 1), acc_stderr: stderr(hits), ppl: Math.exp(-meanLp) }, predictions, pastPositions: pastPositions(used, model.config.maxPositions) };
  }
  const items = data.items;
  const bar = new Progress(task, items.length, "items", progress);
  const predictions: TaskResult["predictions"] = [];
  for (const it of items) {
    const scored = choiceLoglikelihoods(model, tok, it.context, it.choices, kvCache);
    used.push(Math.max(...scored.map((r) => r.positions)));
    const scores = scored.map((r) => r.logprob);
    predictions.push({ acc: argmax(scores), acc_norm: accNormPick(scores, it.choices), scores });
    bar.tick();
    await nextTurn(signal);
  }
  const acc = predictions.map((p, i) => (p.acc === items[i]!.gold ? 1 : 0));
  const accNorm = predictions.map((p, i) => (p.acc_norm === items[i]!.gold ? 1 : 0));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1);
  return { task, n: items.length, metrics: { acc: mean(acc), acc_stderr: stderr(acc), acc_norm: mean(accNorm), acc_norm_stderr: stderr(accNorm) }, predictions, pastPositions: pastPositions(used, model.config.maxPositions) };
}
