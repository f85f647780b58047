import { DEVICE_OPTION } from "./deviceOption.js";
import type { CommandModule } from "yargs";
import { loadModel } from "../model/llama.js";
import { checkSampling, checkSeed, defaultKvCache, generateBatchAsync } from "../model/generate.js";
import { stopTokenIds } from "../model/config.js";
import { Progress } from "../util/progress.js";
import { selectBackend, type DeviceName } from "../backends/select.js";
import { stderrLogger } from "../util/log.js";
import { KV_CACHE_DTYPES, KvCacheDtype } from "../model/kvQuant.js";
import { loadChatTemplate, TEMPLATE_EXAMPLE } from "../serve/chatTemplate.js";
import { MlaError, refuseInert } from "../errors.js";
import { generateOutput } from "./generateOutput.js";
import { abortOnStop, type AbortStopMessages } from "./signals.js";
import { countOf } from "../util/counts.js";

/**
 * Ctrl-C stops after the decode step under way and prints what was generated so far (a streamed text's
 * held-back end and its newline; several prompts' partial texts), instead of exiting mid-line with
 * "no partial output was left behind" while the text stayed on the screen. A second one quits at once.
 */
const GENERATE_STOP: AbortStopMessages = {
  stopping: "stopping after this decode step; what was generated so far is printed",
  kept: "the text printed above is what was generated",
  stopped: "the text printed is what was generated before the stop",
};

interface Args {
  model: string;
  prompt: string[];
  "max-tokens": number;
  temperature: number;
  "top-k"?: number;
  "top-p"?: number;
  "min-p"?: number;
  "repetition-penalty"?: number;
  "presence-penalty"?: number;
  "frequency-penalty"?: number;
  seed?: number;
  device: DeviceName;
  "kv-cache": KvCacheDtype | "auto";
  chat: boolean;
  system?: string;
}

export const generateCommand: CommandModule<object, Args> = {
  command: "generate <model>",
  describe: "continue a prompt, or several together (greedy, or sampled with --temperature), decoding with the KV cache",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "model folder, HF hub id in the local cache, or alias" })
      .option("prompt", { type: "string", array: true, nargs: 1, default: ["Once upon a time"], describe: "the text to continue; one prompt's text streams to stdout as it is generated (Ctrl-C keeps what was printed); give it several times to continue several prompts together, decoded as one batch and printed when all are done, each after a --- line" })
      .option("max-tokens", { type: "number", default: 64, describe: "new tokens per prompt at most (generation ends sooner at EOS)" })
      .option("temperature", { type: "number", default: 0, describe: "0: greedy; else sample from softmax(logits / temperature)" })
      // No yargs defaults for the sampling flags: greedy decoding reads none, so one given is refused without --temperature.
      .option("top-k", { type: "number", describe: "with --temperature: sample among the k most likely tokens only (default 0: all)" })
      .option("top-p", { type: "number", describe: "with --temperature: sample from the smallest set of most likely tokens holding this much probability (default 1: all)" })
      .option("min-p", { type: "number", describe: "with --temperature: drop tokens less likely than this fraction of the most likely one (default 0: none)" })
      .option("repetition-penalty", { type: "number", describe: "> 1 makes tokens of the prompt and of the text so far less likely (HF's repetition_penalty; e.g. 1.1)" })
      .option("presence-penalty", { type: "number", describe: "subtracted from the logit of every token generated so far, once (-2 … 2)" })
      .option("frequency-penalty", { type: "number", describe: "subtracted from the logit of every token generated so far, times its count (-2 … 2)" })
      .option("seed", { type: "number", describe: "with --temperature: prompt i samples from a generator seeded seed + i (default 0)" })
      .option("chat", { type: "boolean", default: false, describe: "each --prompt is a user message, formatted by the model's chat template (as serve's /v1/chat/completions does); prints the replies only" })
      .option("system", { type: "string", describe: "with --chat: a system message before each prompt" })
      .option("device", DEVICE_OPTION)
      .option("kv-cache", { choices: ["auto", ...KV_CACHE_DTYPES] as const, default: "auto" as const, describe: "how the decode cache stores keys/values (MLA: rope keys and latents): auto = bf16 for a bf16 checkpoint on the GPU (as HF transformers stores it), else f32; int8/int4 groups of 32 with a bf16 scale each" }),
  handler: async (a) => {
    if (!a.chat) refuseInert([["--system", a.system]], "--chat", "it is the chat's system message");
    // Before the model loads (generate() asks again): sampling flags without --temperature, and penalties out of range, are refused there.
    // --seed is left alone: scripts pass one always, and with greedy decoding it is simply not needed.
    checkSampling({ temperature: a.temperature, topK: a["top-k"], topP: a["top-p"], minP: a["min-p"], ...penaltyArgs(a) });
    checkSeed(a.seed, a.prompt.length);
    const lm = loadModel(a.model, { backend: selectBackend(a.device, stderrLogger) });
    const template = a.chat ? loadChatTemplate(lm.dir) : null;
    if (a.chat && !template) throw new MlaError("NOT_FOUND", `${a.model} has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template)`, "leave out --chat and write the prompt as the model expects it");
    // The template writes the special tokens it wants, as apply_chat_template's ids have them.
    const prompts = a.prompt.map((p) => {
      if (!template) return lm.tokenizer.encode(String(p), { addSpecialTokens: true });
      const ids = lm.tokenizer.encode(template.render([...(a.system !== undefined ? [{ role: "system", content: a.system }] : []), { role: "user", content: String(p) }]), { addSpecialTokens: false });
      // An empty render is the template's doing (a loop over a misspelt variable), not the prompt's.
      if (ids.length === 0) throw new MlaError("BAD_ARGUMENT", `the chat template (${template.source}) rendered --prompt ${JSON.stringify(String(p).slice(0, 40))} as nothing`, `check the template: it should write each message's content (e.g. ${TEMPLATE_EXAMPLE}); or leave out --chat`);
      return ids;
    });
    const maxTokens = a["max-tokens"];
    const longest = Math.max(...prompts.map((p) => p.length));
    // The last new token is sampled, never fed back: positions 0 … longest + maxTokens − 2 are used.
    if (Number.isInteger(maxTokens) && maxTokens >= 1 && longest + maxTokens - 1 > lm.config.maxPositions)
      stderrLogger.warn(`${longest} prompt tokens + --max-tokens ${maxTokens} pass the model's ${lm.config.maxPositions} positions (max_position_embeddings); text past them is usually poor`);
    // The BOS the prompts begin with is left out of the text: the config's, else the one the tokenizer adds
    // (a config without bos_token_id printed "<s>" before every prompt).
    const bos = lm.config.bosTokenId ?? lm.tokenizer.encode("", { addSpecialTokens: true })[0] ?? null;
    const out = generateOutput({ tokenizer: lm.tokenizer, prompts, chat: template !== null, bos, stops: stopTokenIds(lm.config), write: (s) => process.stdout.write(s), log: stderrLogger });
    // Decoded between event-loop turns, so Ctrl-C stops a long run. Progress on stderr, except while
    // the text streams to a terminal: there the text shows it, and a redrawn bar would cut into it.
    const progress = new Progress("generate", Math.max(1, maxTokens) * prompts.length, "tokens", out.streaming && process.stdout.isTTY ? null : process.stderr);
    const onStep = (n: number) => (out.begin(), progress.tick(n));
    const r = await abortOnStop(GENERATE_STOP, async (signal) => {
      try {
        return await generateBatchAsync(lm.model, prompts, { maxTokens, temperature: a.temperature, topK: a["top-k"], topP: a["top-p"], minP: a["min-p"], ...penaltyArgs(a), seed: a.seed, kvCache: a["kv-cache"] === "auto" ? defaultKvCache(lm.model) : a["kv-cache"], onStep, onToken: out.onToken, signal });
      } catch (e) {
        // Stopped: the text so far goes out before the line that says so.
        if (signal.aborted && e instanceof MlaError && e.code === "INTERRUPTED") out.stopped();
        throw e;
      }
    });
    if (r === null) return;
    out.end(r.sequences);
    if (r.decodeTokens > 0) {
      const which = prompts.length > 1 ? `in all for ${prompts.length} prompts, past each one's first (which its prefill gives)` : "past the prompt's first (which the prefill gives)";
      stderrLogger.info(`decoded ${countOf(r.decodeTokens, "token")} ${which} in ${r.decodeSeconds.toFixed(2)} s (${(r.decodeTokens / r.decodeSeconds).toFixed(1)} tokens/s); steps ${r.steps}`);
    }
  },
};

/** The penalty flags that were given, as generate()'s options. */
function penaltyArgs(a: Args): { repetitionPenalty?: number; presencePenalty?: number; frequencyPenalty?: number } {
  return {
    ...(a["repetition-penalty"] !== undefined ? { repetitionPenalty: a["repetition-penalty"] } : {}),
    ...(a["presence-penalty"] !== undefined ? { presencePenalty: a["presence-penalty"] } : {}),
    ...(a["frequency-penalty"] !== undefined ? { frequencyPenalty: a["frequency-penalty"] } : {}),
  };
}
