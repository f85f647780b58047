/**
 * A generation request's body → the prompts it asks to continue, as ids, with its settings: the text
 * or ids of POST /v1/completions, the conversation of POST /v1/chat/completions rendered by the
 * model's chat template.
 */
import type { LoadedModel } from "../model/llama.js";
import { MlaError } from "../errors.js";
import { encodedWholeBelow, encodePrefix } from "../io/tokenizer.js";
import { parseChatRequest, parseCompletionRequest, type GenerationFields } from "./completionRequest.js";
import { continueFinalMessage, type ChatTemplate } from "./chatTemplate.js";
import { incompleteTail } from "./textStream.js";

/** One prompt of a request: its ids, and its text when it comes back before the completion (echo). */
export interface Prompt {
  ids: number[];
  echo: string | null;
  /** The echo is the ids' decode with its spaces cleaned up (not a text as sent). */
  echoCleaned: boolean;
}

/** A completion's prompts and settings from its request body. */
export type Parse = (body: unknown) => { prompts: Prompt[]; fields: GenerationFields };

/**
 * A text prompt's ids (BOS first where the tokenizer adds one). One that cannot fit the model is
 * refused after tokenizing only its first maxPositions ids or so: a 4 MB text would otherwise hold
 * the event loop, and every stream, for tens of seconds.
 */
function encodePrompt(lm: LoadedModel, text: string, addSpecialTokens: boolean): number[] {
  const max = lm.config.maxPositions;
  const tooLong = () => new MlaError("BAD_ARGUMENT", `the prompt holds more than the model's ${max} positions of tokens`, "shorten the prompt");
  // A text the bounded probe would tokenize whole anyway (most prompts) is tokenized once.
  if (text.length >= encodedWholeBelow(max + 1) && encodePrefix(lm.tokenizer, text, max + 1).length > max) throw tooLong();
  const ids = lm.tokenizer.encode(text, { addSpecialTokens });
  if (ids.length > max) throw tooLong();
  return ids;
}

/** POST /v1/completions: a prompt or a batch of them, texts or ids, each maybe echoed. */
export function completionPrompts(lm: LoadedModel, name: string): Parse {
  return (body) => {
    const r = parseCompletionRequest(body, { name, vocabSize: lm.config.vocabSize });
    const prompts = r.prompts.map((p): Prompt => {
      const ids = typeof p === "string" ? encodePrompt(lm, p, true) : p;
      // A text prompt comes back as sent; ids as their text (special tokens left out, as completions'
      // text), less the bytes of a character they end inside: those come out with the completion.
      if (!r.echo) return { ids, echo: null, echoCleaned: false };
      if (typeof p === "string") return { ids, echo: p, echoCleaned: false };
      return { ids, echo: lm.tokenizer.decode(ids.slice(0, ids.length - incompleteTail(lm.tokenizer, ids)), { skipSpecialTokens: true }), echoCleaned: lm.tokenizer.cleansUpSpaces === true };
    });
    return { prompts, fields: r };
  };
}

/**
 * POST /v1/chat/completions: the conversation as `chat` renders it. The template writes the special
 * tokens it wants (BOS among them), as apply_chat_template's ids have them.
 */
export function chatPrompts(lm: LoadedModel, name: string, chat: ChatTemplate): Parse {
  return (body) => {
    const r = parseChatRequest(body, { name, vocabSize: lm.config.vocabSize });
    const text = r.continueFinalMessage ? continueFinalMessage(chat, r.messages) : chat.render(r.messages, r.addGenerationPrompt);
    return { prompts: [{ ids: encodePrompt(lm, text, false), echo: null, echoCleaned: false }], fields: r };
  };
}
