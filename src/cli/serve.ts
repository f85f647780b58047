import type { CommandModule } from "yargs";
import { DEVICE_OPTION } from "./deviceOption.js";
import { serve } from "../serve/server.js";
import type { DeviceName } from "../backends/select.js";
import { stderrLogger } from "../util/log.js";
import { KV_CACHE_DTYPES, type KvCacheDtype } from "../model/kvQuant.js";
import { gracefulStop } from "./signals.js";
import { MlaError } from "../errors.js";
import { API_KEY } from "../serve/serveOptions.js";

/**
 * --api-key, else the environment's MHA2MLA_API_KEY (a key there stays out of the process list; set
 * but empty counts as unset, as shells write it). A bad key from the environment is named as its own,
 * not as the flag the user did not pass.
 */
function apiKeyOption(flag: string | undefined): { apiKey?: string } {
  if (flag !== undefined) return { apiKey: flag };
  const env = process.env["MHA2MLA_API_KEY"];
  if (!env) return {};
  if (!API_KEY.test(env)) throw new MlaError("BAD_ARGUMENT", "the environment's MHA2MLA_API_KEY holds characters other than visible ASCII", "set it to a key of visible ASCII characters (HTTP headers carry no others reliably), or unset it");
  return { apiKey: env };
}

interface Args {
  model: string;
  host: string;
  port: number;
  "served-model-name"?: string;
  "max-batch": number;
  "kv-cache": KvCacheDtype | "auto";
  "kv-budget-mb"?: number;
  "prefix-cache-mb": number;
  "api-key"?: string;
  "default-max-tokens": number;
  "prefill-chunk": number;
  device: DeviceName;
}

export const serveCommand: CommandModule<object, Args> = {
  command: "serve <model>",
  describe: "serve the model over HTTP with the OpenAI completions and chat APIs (POST /v1/completions, /v1/chat/completions for a model with a chat template; streamed or not), requests in flight decoded as one continuous batch",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "model folder, HF hub id in the local cache, or alias" })
      .option("host", { type: "string", default: "127.0.0.1", describe: "address to listen on (0.0.0.0: every interface)" })
      .option("port", { type: "number", default: 8000, describe: "TCP port (0: any free one, printed at start)" })
      .option("served-model-name", { type: "string", describe: "the model name clients send (default: MODEL as given)" })
      .option("max-batch", { type: "number", default: 32, describe: "the most sequences decoded together; later requests wait for a place" })
      .option("kv-cache", { choices: ["auto", ...KV_CACHE_DTYPES] as const, default: "auto" as const, describe: "how decode caches store keys/values (MLA: rope keys and latents): auto = bf16 for a bf16 checkpoint on the GPU, else f32" })
      .option("kv-budget-mb", { type: "number", describe: "the most MB of cache all admitted sequences may reserve (each reserves its prompt + max_tokens), counted as the caches hold them in memory: on the CPU float32 rows for f32, int8 and int4 caches (a bf16 cache's are bf16 on the native backend), the cache's own dtype on the GPU; default: no limit but --max-batch" })
      .option("prefix-cache-mb", { type: "number", default: 1024, describe: "MB of prompts' caches kept so that a later prompt beginning the same way (a system prompt, a chat's earlier turns) prefills only the rest; 0: none" })
      .option("prefill-chunk", { type: "number", default: 512, describe: "the most prompt tokens prefilled between two decode steps, so a long prompt does not stall the replies being decoded; 0: each prompt whole" })
      .option("default-max-tokens", { type: "number", default: 1024, describe: "the most new tokens of a chat reply whose request sets no max_tokens (each request reserves cache for its prompt and limit)" })
      .option("api-key", { type: "string", describe: "require Authorization: Bearer KEY on every route but /health (/v1/…, /tokenize, /detokenize, /tokenizer_info, /stats, /metrics; default: the environment's MHA2MLA_API_KEY, else none)" })
      .option("device", DEVICE_OPTION),
  handler: async (a) => {
    const server = await serve(a.model, {
      host: a.host,
      port: a.port,
      maxBatch: a["max-batch"],
      prefixCacheMb: a["prefix-cache-mb"],
      defaultMaxTokens: a["default-max-tokens"],
      prefillChunk: a["prefill-chunk"],
      kvCache: a["kv-cache"],
      device: a.device,
      logger: stderrLogger,
      ...(a["served-model-name"] !== undefined ? { name: a["served-model-name"] } : {}),
      ...apiKeyOption(a["api-key"]),
      ...(a["kv-budget-mb"] !== undefined ? { kvBudgetMb: a["kv-budget-mb"] } : {}),
    });
    // Ctrl-C: stop taking requests and finish those in flight; a second one quits at once.
    const stop = gracefulStop({ stopping: "no new requests; finishing those in flight, then stopping", kept: "requests in flight were cut off" });
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (!stop.requested()) return;
        clearInterval(poll);
        void server.close().then(resolve);
      }, 100);
    });
    stop.release();
    const s = server.stats();
    stderrLogger.info(`served ${s.requests} request${s.requests === 1 ? "" : "s"}, ${s.newTokens} new tokens; stopped`);
  },
};
