/**
 * serve()'s options, and their check: all of it before the model loads (minutes for a large one), so
 * a mistyped flag is refused at once.
 */
import { constants as bufferConstants } from "node:buffer";
import { MlaError } from "../errors.js";
import { KV_CACHE_DTYPES, type KvCacheDtype } from "../model/kvQuant.js";
import { DEVICE_NAMES, type DeviceName } from "../backends/select.js";
import type { Logger } from "../util/log.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { throwIfAborted } from "../util/abort.js";
import { checkBatcherOptions, type BatcherOptions } from "./batcher.js";
import type { LoadedModel } from "../model/llama.js";

export interface ServeOptions {
  /** Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface). */
  host?: string;
  /** Port (default 8000; 0: any free port, see Server.port). */
  port?: number;
  /** The model name clients send and /v1/models lists (default: the model as given). */
  name?: string;
  /** The most sequences decoded together (default 32). */
  maxBatch?: number;
  /** How decode caches store keys/values (default "auto": bf16 for a bf16 checkpoint on the GPU, else f32). */
  kvCache?: KvCacheDtype | "auto";
  /** The most MB all admitted sequences' caches may reserve (default: no limit but maxBatch). */
  kvBudgetMb?: number;
  /** MB of prompts' caches kept so that later prompts beginning the same way prefill only the rest (default 1024; 0: none). */
  prefixCacheMb?: number;
  /** The most prompt tokens prefilled between two decode steps (default 512; 0: each prompt whole, as it comes). */
  prefillChunk?: number;
  /**
   * The most new tokens of a chat reply whose request sets no limit (default 1024). Each request
   * reserves cache for its prompt and limit when admitted, so "up to the model's positions" would
   * reserve a whole context per chat (16 GiB at Llama 3.1 8B's 131k).
   */
  defaultMaxTokens?: number;
  /** Where a model given by name runs (default "auto"; a LoadedModel keeps its backend). */
  device?: DeviceName;
  /**
   * Requests to every route but /health (/v1/…, the tokenizer routes, /stats, /metrics) must carry
   * `Authorization: Bearer KEY` (as vLLM's --api-key); /health stays open.
   * Default: none, fine on 127.0.0.1; set one before listening on other interfaces.
   */
  apiKey?: string;
  /** The largest request body in bytes (default 4 MiB). */
  maxBodyBytes?: number;
  /** One line per finished request, and the start (default: silent). */
  logger?: Logger;
  /** Aborting it closes the server at once: requests in flight end, their connections close. */
  signal?: AbortSignal;
  /**
   * While close() waits for the requests in flight, a connection that waits on its client (a body
   * that stopped arriving, a streamed answer its client stopped reading) and has moved no bytes for
   * this many milliseconds is cut (default 5000; stalledConnections.ts).
   */
  closeStallMs?: number;
}

/** The options' values serve() runs with, defaults filled in. */
export interface ServeSettings {
  port: number;
  /** The most new tokens of a request that sets no limit. */
  defaultMax: number;
  /** The largest request body in bytes. */
  maxBody: number;
  /** The batcher's options but its cache type (known once the model is loaded). */
  batching: Omit<BatcherOptions, "kvCache">;
  /** On close, a connection waiting on its client is cut after this many ms without a byte moved. */
  closeStallMs: number;
}

const SERVE_KINDS: OptionKinds<ServeOptions> = { host: "string", port: "number", name: "string", maxBatch: "number", kvCache: "string", kvBudgetMb: "number", prefixCacheMb: "number", prefillChunk: "number", defaultMaxTokens: "number", apiKey: "string", device: "string", maxBodyBytes: "number", logger: "object", signal: "object", closeStallMs: "number" };

const MAX_STRING_LENGTH = bufferConstants.MAX_STRING_LENGTH;

/** What `v` is, for a message: `undefined`, `a number (3)`, `an object without "dir", "model"`. */
function describedModel(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (typeof v === "object" && !Array.isArray(v)) {
    const missing = LOADED_FIELDS.filter((k) => !(k in v) || (v as Record<string, unknown>)[k] === undefined || (v as Record<string, unknown>)[k] === null);
    return `an object without ${missing.map((k) => `"${k}"`).join(", ")}`;
  }
  if (typeof v === "string") return "an empty string";
  return `${Array.isArray(v) ? "an array" : `a ${typeof v}`}${typeof v === "number" || typeof v === "boolean" ? ` (${String(v)})` : ""}`;
}

/** The fields of loadModel()'s answer that serve() reads. */
const LOADED_FIELDS = ["dir", "config", "model", "tokenizer"] as const;

/**
 * Refuses serve()'s first argument unless it is a model spec (a non-empty string: folder, hub id,
 * alias) or a model loaded by loadModel(): anything else failed deep inside ("reading 'dir'").
 */
export function checkServedModel(model: unknown): asserts model is string | LoadedModel {
  if (typeof model === "string" && model !== "") return;
  if (model !== null && typeof model === "object" && !Array.isArray(model) && LOADED_FIELDS.every((k) => (model as Record<string, unknown>)[k] !== undefined && (model as Record<string, unknown>)[k] !== null)) return;
  throw new MlaError("BAD_ARGUMENT", `serve(): the model is ${describedModel(model)}, not a model folder, hub id or alias, nor a model from loadModel()`, 'pass e.g. serve("stories260K", { port: 8000 }) or serve(loadModel(dir), { port: 8000 })');
}

/** What an API key may hold: visible ASCII (HTTP headers carry no other characters reliably). */
export const API_KEY = /^[\x21-\x7e]+$/;

/** Checks serve()'s options (and that it is not aborted already); returns the values it runs with. */
export function checkServeOptions(opts: ServeOptions): ServeSettings {
  checkOptionTypes("serve()", opts, SERVE_KINDS);
  throwIfAborted(opts.signal);
  const port = opts.port ?? 8000;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) throw new MlaError("BAD_ARGUMENT", `--port ${port} is not a TCP port`, "pass a whole number from 1 to 65535, or 0 for any free port");
  if (opts.kvCache !== undefined && opts.kvCache !== "auto" && !KV_CACHE_DTYPES.includes(opts.kvCache)) throw new MlaError("BAD_ARGUMENT", `--kv-cache ${opts.kvCache} is not a cache type`, `use auto, ${KV_CACHE_DTYPES.join(", ")}`);
  if (opts.device !== undefined && !DEVICE_NAMES.includes(opts.device)) throw new MlaError("BAD_ARGUMENT", `--device ${opts.device} is not known`, `use ${DEVICE_NAMES.join(", ")}`);
  if (opts.kvBudgetMb !== undefined && !(Number.isFinite(opts.kvBudgetMb) && opts.kvBudgetMb > 0)) throw new MlaError("BAD_ARGUMENT", `--kv-budget-mb ${opts.kvBudgetMb} is not a size in MB`, "pass a positive number, or leave it out for no limit but --max-batch");
  if (opts.prefixCacheMb !== undefined && !(Number.isFinite(opts.prefixCacheMb) && opts.prefixCacheMb >= 0)) throw new MlaError("BAD_ARGUMENT", `--prefix-cache-mb ${opts.prefixCacheMb} is not a size in MB`, "pass 0 to keep no prompts, or a positive number");
  if (opts.apiKey !== undefined && !API_KEY.test(opts.apiKey))
    throw new MlaError("BAD_ARGUMENT", opts.apiKey.length ? "--api-key holds characters other than visible ASCII" : "--api-key is empty", "pass a key of visible ASCII characters (HTTP headers carry no others reliably), or leave --api-key out");
  const defaultMax = opts.defaultMaxTokens ?? 1024;
  if (!(Number.isInteger(defaultMax) && defaultMax >= 1)) throw new MlaError("BAD_ARGUMENT", `--default-max-tokens ${defaultMax} is not a token count`, "pass a whole number ≥ 1");
  const maxBody = opts.maxBodyBytes ?? 4 * 2 ** 20;
  // A body is parsed as one string: past the engine's longest, no request could be read.
  if (!(Number.isInteger(maxBody) && maxBody >= 1 && maxBody <= MAX_STRING_LENGTH))
    throw new MlaError("BAD_ARGUMENT", `serve()'s maxBodyBytes ${maxBody} is not a body size in bytes`, `pass a whole number from 1 to ${MAX_STRING_LENGTH} (the longest text JavaScript can parse), or leave it out (default ${4 * 2 ** 20}, 4 MiB)`);
  const batching = { maxBatch: opts.maxBatch ?? 32, prefixCacheBytes: (opts.prefixCacheMb ?? 1024) * 2 ** 20, prefillChunk: opts.prefillChunk ?? 512, ...(opts.kvBudgetMb !== undefined ? { kvBudgetBytes: opts.kvBudgetMb * 2 ** 20 } : {}) };
  checkBatcherOptions(batching);
  const closeStallMs = opts.closeStallMs ?? 5000;
  if (!(Number.isFinite(closeStallMs) && closeStallMs > 0)) throw new MlaError("BAD_ARGUMENT", `serve()'s closeStallMs ${closeStallMs} is not a duration in milliseconds`, "pass a positive number of milliseconds, or leave it out (default 5000)");
  return { port, defaultMax, maxBody, batching, closeStallMs };
}
