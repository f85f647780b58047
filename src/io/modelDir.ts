/**
 * Resolves what the user typed as MODEL into a local folder: a path, a Hugging Face hub id found in
 * the local HF cache (`models--ORG--NAME/snapshots/REV`, via `refs/main`), or an alias such as
 * `llama2-7b`. Nothing is downloaded; a miss lists every place that was looked at.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ioError, MlaError } from "../errors.js";

export const MODEL_ALIASES: Record<string, string> = {
  "llama2-7b": "meta-llama/Llama-2-7b-hf",
  "llama2-13b": "meta-llama/Llama-2-13b-hf",
  "llama2-70b": "meta-llama/Llama-2-70b-hf",
  "llama3-8b": "meta-llama/Meta-Llama-3-8B",
  "llama3.1-8b": "meta-llama/Llama-3.1-8B",
  "llama3.2-1b": "meta-llama/Llama-3.2-1B",
  "llama3.2-3b": "meta-llama/Llama-3.2-3B",
  "mistral-7b": "mistralai/Mistral-7B-v0.1",
  "qwen2-0.5b": "Qwen/Qwen2-0.5B",
  "qwen2-1.5b": "Qwen/Qwen2-1.5B",
  "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
  "qwen2.5-7b": "Qwen/Qwen2.5-7B",
  "smollm-135m": "HuggingFaceTB/SmolLM-135M",
  "smollm-360m": "HuggingFaceTB/SmolLM-360M",
  "smollm-1.7b": "HuggingFaceTB/SmolLM-1.7B",
  "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
};

/** The package root (where fixtures/ lives), from this compiled file's location dist/src/io/. */
export function packageRoot(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
}

/** Models bundled with the package, usable by name anywhere. */
export function bundledModels(): Record<string, string> {
  const root = path.join(packageRoot(), "fixtures", "models");
  return { stories260K: path.join(root, "stories260K"), "stories260K-mha": path.join(root, "stories260K-mha") };
}

export function hfCacheDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  const dirs: string[] = [];
  if (env["HF_HUB_CACHE"]) dirs.push(env["HF_HUB_CACHE"]);
  if (env["HUGGINGFACE_HUB_CACHE"]) dirs.push(env["HUGGINGFACE_HUB_CACHE"]);
  if (env["HF_HOME"]) dirs.push(path.join(env["HF_HOME"], "hub"));
  dirs.push(path.join(env["XDG_CACHE_HOME"] ?? path.join(os.homedir(), ".cache"), "huggingface", "hub"));
  return [...new Set(dirs)];
}

function isModelFolder(dir: string): boolean {
  return fs.existsSync(path.join(dir, "config.json"));
}

/**
 * The hint for a folder without config.json: where this tool's folders that hold models keep them
 * (a pipeline's mla/ and finetune/, a study's runs), or that a fine-tuning run has not written its
 * model yet; else what a model folder holds.
 */
function noConfigHint(dir: string): string {
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    // unreadable: the generic hint
  }
  const has = (name: string) => entries.some((e) => e.name === name);
  const models = entries.filter((e) => e.isDirectory() && isModelFolder(path.join(dir, e.name))).map((e) => path.join(dir, e.name)).sort();
  if (models.length > 0) {
    const kind = has("pipeline.json") ? "it is a pipeline folder; its models" : has("study.json") ? "it is a study folder; its models" : "model folders inside it";
    return `${kind}: ${models.slice(0, 6).join(", ")}${models.length > 6 ? `, … (${models.length})` : ""}; pass one of them`;
  }
  if (has("train_log.jsonl") || has("checkpoint"))
    return `it is a fine-tuning run that has not written its model yet: finish it with \`mha2mla finetune MODEL --data … --out ${dir} --resume\` (the run's own flags), then pass ${dir}`;
  return "point at a Hugging Face model folder (config.json, *.safetensors, tokenizer.json)";
}

/** The snapshot folder of `hubId` in one cache root, or null. */
function findInCache(cache: string, hubId: string): string | null {
  const repo = path.join(cache, "models--" + hubId.split("/").join("--"));
  if (!fs.existsSync(repo)) return null;
  const snapshots = path.join(repo, "snapshots");
  const ref = path.join(repo, "refs", "main");
  if (fs.existsSync(ref)) {
    const rev = fs.readFileSync(ref, "utf8").trim();
    const snap = path.join(snapshots, rev);
    if (isModelFolder(snap)) return snap;
  }
  if (!fs.existsSync(snapshots)) return null;
  const candidates = fs
    .readdirSync(snapshots)
    .map((r) => path.join(snapshots, r))
    .filter(isModelFolder)
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  return candidates[0] ?? null;
}

export interface ResolvedModel {
  dir: string;
  /** How it was found: "path", "bundled", or the hub id. */
  source: string;
}

export function resolveModel(spec: string, env: NodeJS.ProcessEnv = process.env): ResolvedModel {
  // An object is not stringified: a loaded model's JSON is its weights (megabytes to more than a string holds).
  if (typeof spec === "object" && spec !== null) {
    const dir = (spec as { dir?: unknown }).dir;
    throw new MlaError("BAD_ARGUMENT", `the model (${Array.isArray(spec) ? "a list" : "an object"}${typeof dir === "string" ? `: a loaded model of ${dir}?` : ""}) is not a name`, `pass a model folder, a Hugging Face hub id, an alias or a bundled name (a string)${typeof dir === "string" ? `: e.g. its folder, ${JSON.stringify(dir)}` : ""}`);
  }
  if (typeof spec !== "string" || spec === "") throw new MlaError("BAD_ARGUMENT", `the model ${JSON.stringify(spec) ?? String(spec)} is not a name`, "pass a model folder, a Hugging Face hub id, an alias or a bundled name (a string)");
  const looked: string[] = [];
  if (fs.existsSync(spec) && fs.statSync(spec).isDirectory()) {
    if (!isModelFolder(spec)) {
      // existsSync calls a link that leads nowhere (or back to itself) absent: name it as what it is.
      // It calls config.json absent in a folder this user may not enter too: lstat's EACCES had been an internal error.
      let link: fs.Stats | undefined;
      try {
        link = fs.lstatSync(path.join(spec, "config.json"), { throwIfNoEntry: false });
      } catch (e) {
        throw ioError("cannot read the model folder", spec, e);
      }
      if (link) throw new MlaError("BAD_CHECKPOINT", `${path.join(spec, "config.json")} is a link that leads to no file`, "point the link at the model's config.json, or copy the file there");
      throw new MlaError("NOT_FOUND", `model folder ${spec} has no config.json`, noConfigHint(spec));
    }
    return { dir: spec, source: "path" };
  }
  if (fs.existsSync(spec) && isModelFolder(path.dirname(spec)))
    throw new MlaError("BAD_ARGUMENT", `${spec} is a file of a model folder, not the folder`, `pass the folder: ${path.dirname(spec)}`);
  if (fs.existsSync(spec)) throw new MlaError("BAD_ARGUMENT", `${spec} is a file, not a model folder`, "pass the folder holding config.json (a text file goes to --text, --data, --calib or --eval-text)");
  // A path as written (./x, ../x, /x, ~/x) is not also looked up as a hub id or a name.
  if (/^(\.{1,2}|~)?[\\/]/.test(spec)) throw new MlaError("NOT_FOUND", `no model folder at ${path.resolve(spec)}`, `check the path; a model folder holds config.json${nearbyModels(spec)}`);
  looked.push(`path ${path.resolve(spec)}`);
  // Bundled names as people type them: stories260k finds stories260K.
  const bundled = Object.entries(bundledModels()).find(([n]) => n.toLowerCase() === spec.toLowerCase())?.[1];
  if (bundled && isModelFolder(bundled)) return { dir: bundled, source: "bundled" };
  const hubId = MODEL_ALIASES[spec.toLowerCase()] ?? (/^[\w.-]+\/[\w.-]+$/.test(spec) ? spec : null);
  if (hubId) {
    for (const cache of hfCacheDirs(env)) {
      const dir = findInCache(cache, hubId);
      if (dir) return { dir, source: hubId };
      looked.push(`${path.join(cache, "models--" + hubId.split("/").join("--"))}`);
    }
  }
  throw new MlaError(
    "NOT_FOUND",
    `model "${spec}" was not found${hubId && hubId !== spec ? ` (alias of ${hubId})` : ""}; looked in:\n    ${looked.join("\n    ")}`,
    `nothing is downloaded: fetch it first (e.g. \`huggingface-cli download ${hubId ?? "ORG/NAME"}\`) or pass a local folder; aliases: ${Object.keys(MODEL_ALIASES).join(", ")}, bundled: ${Object.keys(bundledModels()).join(", ")}${nearbyModels(spec)}`,
  );
}

/** "; did you mean …" for a model folder of that name beside the package (../shared/models, as the README's examples use), else "". */
function nearbyModels(spec: string): string {
  const name = path.basename(spec);
  const dir = path.join(packageRoot(), "..", "shared", "models", name);
  return name && isModelFolder(dir) ? `; did you mean ${path.relative(process.cwd(), dir) || dir}?` : "";
}
