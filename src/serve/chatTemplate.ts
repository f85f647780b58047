/**
 * A model's chat template: the Jinja text that turns a list of messages into the prompt the model was
 * tuned on, as transformers' apply_chat_template renders it (through @huggingface/jinja, the
 * implementation transformers.js uses). transformers saves it as chat_template.jinja (newer),
 * chat_template.json, or the chat_template field of tokenizer_config.json (a string, or a list of
 * named templates of which "default" is used).
 */
import fs from "node:fs";
import path from "node:path";
import { Template } from "@huggingface/jinja";
import { MlaError } from "../errors.js";

export interface ChatMessage {
  role: string;
  content: string;
}

/** What a template that renders nothing should write, for the refusals that name it. */
export const TEMPLATE_EXAMPLE = "{% for m in messages %}{{ m.content }}{% endfor %}";

/**
 * The server's error for a render of nothing: the template's doing (a loop over a misspelt variable),
 * not the client's, so a server error naming the template. `what`: what was rendered; `otherwise`: the
 * way around it.
 */
export function renderedNothing(chat: ChatTemplate, what: string, otherwise: string): MlaError {
  return new MlaError("BAD_CHECKPOINT", `the model's chat template (${chat.source}) rendered ${what} as nothing`, `the template should write each message's content (e.g. ${TEMPLATE_EXAMPLE}); ${otherwise}`);
}

export interface ChatTemplate {
  /** The file it came from (for messages). */
  readonly source: string;
  /** The template's Jinja text (what a vLLM client reads from /tokenizer_info). */
  readonly text: string;
  /** The prompt text for `messages`, ending where the assistant's reply begins (unless `addGenerationPrompt` is false). */
  render(messages: readonly ChatMessage[], addGenerationPrompt?: boolean): string;
}

/**
 * The prompt text that continues `messages`' last message (an assistant reply begun by the caller) rather
 * than opening a new one, as transformers' apply_chat_template(continue_final_message=True) makes it: the
 * conversation rendered without a generation prompt, cut right after the last message's content.
 */
export function continueFinalMessage(t: ChatTemplate, messages: readonly ChatMessage[]): string {
  const rendered = t.render(messages, false);
  const last = messages[messages.length - 1]!.content;
  for (const text of [last, last.trim()]) {
    const at = text ? rendered.lastIndexOf(text) : -1;
    if (at >= 0) return rendered.slice(0, at + text.length);
  }
  throw new MlaError("BAD_ARGUMENT", "the chat template does not write the last message's content as given, so it cannot be continued", "send the conversation without continue_final_message, or as one prompt to /v1/completions");
}

function readJson(file: string): Record<string, unknown> | null {
  if (!fs.existsSync(file)) return null;
  try {
    const v = JSON.parse(fs.readFileSync(file, "utf8")) as unknown;
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch (e) {
    throw new MlaError("BAD_TOKENIZER", `${file}: not valid JSON (${(e as Error).message})`, "the file is corrupt; copy it again");
  }
}

/** A special token's text: tokenizer_config.json writes it as a string or as {content: …}. */
function tokenText(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return "";
}

/** The template text of a chat_template value, and whether it had one. */
function templateText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const named = v.filter((t): t is { name: string; template: string } => typeof t === "object" && t !== null && typeof t.template === "string");
    return (named.find((t) => t.name === "default") ?? named[0])?.template ?? null;
  }
  return null;
}

/** A template's raise_exception: it refuses the messages (anything else thrown while rendering is the template's own failure). */
class TemplateRefusal extends Error {}
const REFUSE = "mha2mla_raise_exception";

/**
 * text with its raise_exception calls renamed to REFUSE: only inside {{ … }} and {% … %} and outside their
 * quoted strings, so the text a template prints is unchanged.
 */
function routeRefusals(text: string): string {
  return text.replace(/\{[{%][\s\S]*?[%}]\}/g, (block) => block.replace(/("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|\braise_exception(\s*\()/g, (m, quoted: string | undefined, paren: string | undefined) => (quoted !== undefined ? m : `${REFUSE}${paren}`)));
}

/** The chat template of the model folder `dir`, or null when it has none. */
export function loadChatTemplate(dir: string): ChatTemplate | null {
  // A folder that is not there read as a model without a chat template (null): a mistyped path looked like a model's answer.
  if (!fs.existsSync(dir)) throw new MlaError("NOT_FOUND", `model folder ${dir} does not exist`, "pass the model folder's path, e.g. loadModel(spec).dir or resolveModel(spec).dir");
  if (!fs.statSync(dir).isDirectory()) throw new MlaError("BAD_ARGUMENT", `${dir} is a file, not a model folder`, "pass the folder holding tokenizer_config.json, e.g. loadModel(spec).dir or resolveModel(spec).dir");
  const config = readJson(path.join(dir, "tokenizer_config.json")) ?? {};
  const jinja = path.join(dir, "chat_template.jinja");
  const json = path.join(dir, "chat_template.json");
  let source: string, text: string | null;
  if (fs.existsSync(jinja)) [source, text] = [jinja, fs.readFileSync(jinja, "utf8")];
  else if (fs.existsSync(json)) [source, text] = [json, templateText(readJson(json)?.["chat_template"])];
  else [source, text] = [path.join(dir, "tokenizer_config.json"), templateText(config["chat_template"])];
  if (text === null) return null;
  let template: Template;
  try {
    // Its raise_exception calls go to a function of ours (the renderer's own raise_exception cannot be
    // replaced), so a refusal of the messages is told apart from a failure of the template.
    template = new Template(routeRefusals(text));
  } catch (e) {
    throw new MlaError("BAD_TOKENIZER", `${source}: the chat template does not parse (${(e as Error).message})`, "fix or remove the chat template; completions work without it");
  }
  // Older folders name their special tokens in special_tokens_map.json only.
  const map = readJson(path.join(dir, "special_tokens_map.json")) ?? {};
  const special = (k: string) => tokenText(config[k]) || tokenText(map[k]);
  const specials = { bos_token: special("bos_token"), eos_token: special("eos_token"), unk_token: special("unk_token"), pad_token: special("pad_token") };
  // Templates written for OpenAI's content parts loop over message.content (vLLM detects them the same
  // way): they get each message's text as one text part, the others get a string.
  const parts = /\{%-?\s*for\s+\w+\s+in\s+(message|msg|m)(\[\s*['"]content['"]\s*\]|\.content)\s*-?%\}/.test(text);
  return {
    source,
    text,
    render: (messages, addGenerationPrompt = true) => {
      try {
        return template.render({
          messages: parts ? messages.map((m) => ({ ...m, content: [{ type: "text", text: m.content }] })) : messages,
          add_generation_prompt: addGenerationPrompt,
          // What apply_chat_template passes when a request has none (templates test them with `is not none`).
          tools: null,
          documents: null,
          ...specials,
          // Templates call raise_exception to refuse a conversation they cannot format (roles out of
          // order): told apart from the template's own failures (an undefined variable, a filter this
          // renderer lacks), which are not the messages' fault.
          [REFUSE]: (message: unknown) => {
            throw new TemplateRefusal(String(message));
          },
        });
      } catch (e) {
        if (e instanceof TemplateRefusal) throw new MlaError("BAD_ARGUMENT", `the model's chat template refuses these messages: ${e.message}`, `change the messages as that says (e.g. alternate user and assistant); the template is ${path.basename(source)}`);
        throw new MlaError("BAD_TOKENIZER", `${source}: the chat template fails while formatting the messages (${(e as Error).message})`, "the template itself is at fault (a name or filter it uses is not defined here): fix or remove it; completions work without it");
      }
    },
  };
}
