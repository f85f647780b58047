/**
 * A generation request's body → the prompts it asks to continue, as ids, with its settings: the text
 * or ids of POST /v1/completions, the conversation of POST /v1/chat/completions rendered by the
 * model's chat template.
 */
import type { LoadedModel } from "../model/llama.js";
import { MlaError } from "../errors.js";
import { encodeUpToOffThread } from "../io/encodeOffThread.js";
import { parseChatRequest, parseCompletionRequest, type GenerationFields } from "./completionRequest.js";
import { continueFinalMessage, renderedNothing, type ChatTemplate } from "./chatTemplate.js";
import { incompleteTail } from "./textStream.js";
import { aboutPrompt, refusal } from "./httpJson.js";

/** One prompt of a request: its ids, and its text when it comes back before the completion (echo). */
export interface Prompt {
  ids: number[];
  /**
   * The ids encode a text (a text prompt, a rendered chat): they end in whole characters, so a U+FFFD
   * their decode ends in is one the text holds, not the bytes of a character the completion finishes.
   */
  whole: boolean;
  echo: string | null;
  /** The echo is the ids' decode with its spaces cleaned up (not a text as sent). */
  echoCleaned: boolean;
}

/** A completion's prompts and settings from its request body. */
export type Parse = (body: unknown) => Promise<{ prompts: Prompt[]; fields: GenerationFields }>;

/** Texts longer than this (characters, ~50 ms of tokenizing) are tokenized in a worker thread (encodeOffThread.ts). */
const OFF_THREAD_TEXT = 65_536;

/**
 * A text prompt's ids (BOS first where the tokenizer adds one). One that cannot fit the model is
 * refused after tokenizing only its first maxPositions ids or so: a 4 MB text would otherwise take
 * tens of seconds. One longer in bytes than maxPositions tokens can stand for is refused untokenized:
 * the probe of a text of long tokens grows with them (8 MB of spaces took 10 s at 131072 positions).
 * A long one is tokenized in a worker thread, so that the streams of other requests go on meanwhile.
 */
async function encodePrompt(lm: LoadedModel, text: string, addSpecialTokens: boolean): Promise<number[]> {
  const max = lm.config.maxPositions;
  const tooLong = () => refusal("BAD_ARGUMENT", `the prompt holds more than the model's maximum context length of ${max} tokens`, "shorten the prompt", { apiCode: "context_length_exceeded" });
  const perToken = lm.tokenizer.bytesPerToken?.() ?? null;
  if (perToken !== null && Buffer.byteLength(text, "utf8") > max * perToken) throw tooLong();
  const ids = await encodeUpToOffThread(lm.tokenizer, text, { max, addSpecialTokens, offThreadAbove: OFF_THREAD_TEXT });
  if (ids === null) throw tooLong();
  return ids;
}

/** f(), its refusal naming prompt[i] where the request sent a batch (as the batcher's refusals do). */
async function namedInBatch<T>(count: number, i: number, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (count > 1 && e instanceof MlaError) throw aboutPrompt(e, i);
    throw e;
  }
}

/** POST /v1/completions: a prompt or a batch of them, texts or ids, each maybe echoed. */
export function completionPrompts(lm: LoadedModel, name: string): Parse {
  return async (body) => {
    const r = parseCompletionRequest(body, { name, vocabSize: lm.config.vocabSize });
    const prompts: Prompt[] = [];
    // In order, one at a time: the refusal is the first failing prompt's.
    for (const [i, p] of r.prompts.entries()) prompts.push(await promptOf(p, i));
    return { prompts, fields: r };

    async function promptOf(p: string | number[], i: number): Promise<Prompt> {
      const ids = typeof p === "string" ? await namedInBatch(r.prompts.length, i, () => encodePrompt(lm, p, true)) : p;
      // A text prompt comes back as sent; ids as their text (special tokens left out, as completions'
      // text), less the bytes of a character they end inside: those come out with the completion.
      const whole = typeof p === "string";
      if (!r.echo) return { ids, whole, echo: null, echoCleaned: false };
      if (whole) return { ids, whole, echo: p, echoCleaned: false };
      return { ids, whole, echo: lm.tokenizer.decode(ids.slice(0, ids.length - incompleteTail(lm.tokenizer, ids)), { skipSpecialTokens: true }), echoCleaned: lm.tokenizer.cleansUpSpaces === true };
    }
  };
}

/**
 * POST /v1/chat/completions: the conversation as `chat` renders it. The template writes the special
 * tokens it wants (BOS among them), as apply_chat_template's ids have them.
 */
export function chatPrompts(lm: LoadedModel, name: string, chat: ChatTemplate): Parse {
  return async (body) => {
    const r = parseChatRequest(body, { name, vocabSize: lm.config.vocabSize });
    const text = r.continueFinalMessage ? continueFinalMessage(chat, r.messages) : chat.render(r.messages, r.addGenerationPrompt);
    const ids = await encodePrompt(lm, text, false);
    if (ids.length === 0) throw renderedNothing(chat, "the conversation", "fix it in the model folder, or send the formatted text to POST /v1/completions");
    return { prompts: [{ ids, whole: true, echo: null, echoCleaned: false }], fields: r };
  };
}
