/**
 * The OpenAI response bodies of the two generation endpoints: `text_completion` (POST /v1/completions)
 * and `chat.completion` (POST /v1/chat/completions), whole or as stream chunks. Only the choice's
 * shape differs between them; ids, usage and the event framing are the server's.
 */
export type Finish = "stop" | "length";

/**
 * A token's text, where that starts in the text returned (tokenOffsets.ts), its log-probability, and
 * the most likely tokens' at its step; both null for an echoed prompt's first token, which nothing
 * comes before.
 */
export interface TokenEntry {
  token: string;
  /** The UTF-8 bytes the token adds (tokenBytes.ts: a byte token's own byte, not U+FFFD's); absent: its text's. */
  bytes?: number[];
  offset: number;
  logprob: number | null;
  top: { token: string; bytes?: number[]; logprob: number }[] | null;
}

/**
 * The completions API's (legacy) log-probabilities of `entries`. Each step's top_logprobs holds the
 * sampled token too (up to logprobs + 1 entries, as OpenAI and vLLM give them), also at logprobs 0.
 */
function completionLogprobs(entries: readonly TokenEntry[] | null): Record<string, unknown> | null {
  if (!entries) return null;
  const top = (e: TokenEntry) => {
    if (!e.top) return null;
    const pairs = e.top.map((t): [string, number] => [t.token, t.logprob]);
    if (e.logprob !== null && !e.top.some((t) => t.token === e.token)) pairs.push([e.token, e.logprob]);
    return Object.fromEntries(pairs); // own keys, whatever the text ("__proto__", "constructor")
  };
  return { tokens: entries.map((e) => e.token), token_logprobs: entries.map((e) => e.logprob), top_logprobs: entries.map(top), text_offset: entries.map((e) => e.offset) };
}

const utf8 = (text: string) => [...Buffer.from(text, "utf8")];

/** The chat API's log-probabilities of `entries` (`content`, each token with its UTF-8 bytes). */
function chatLogprobs(entries: readonly TokenEntry[] | null): Record<string, unknown> | null {
  if (!entries) return null;
  return { content: entries.map((e) => ({ token: e.token, logprob: e.logprob, bytes: e.bytes ?? utf8(e.token), top_logprobs: (e.top ?? []).map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes ?? utf8(t.token) })) })) };
}

export interface ResponseShape {
  /** The id's prefix ("cmpl", "chatcmpl"). */
  readonly idPrefix: string;
  /** The `object` of a whole response and of a stream chunk. */
  readonly object: string;
  readonly chunkObject: string;
  /** Choice `index` of a whole response; `logprobs`: its tokens' (null: not asked). */
  choice(text: string, finish: Finish, index: number, logprobs: readonly TokenEntry[] | null): Record<string, unknown>;
  /**
   * A stream chunk's choice: a piece of text (finish null), or the end (finish set, with the last
   * piece); `logprobs`: the tokens since the last chunk.
   */
  delta(piece: string, finish: Finish | null, index: number, logprobs: readonly TokenEntry[] | null): Record<string, unknown>;
  /** The choice of the chunk that opens a choice's stream, if the shape has one. */
  opening?(index: number): Record<string, unknown>;
}

export const TEXT_COMPLETION: ResponseShape = {
  idPrefix: "cmpl",
  object: "text_completion",
  chunkObject: "text_completion",
  choice: (text, finish, index, logprobs) => ({ index, text, logprobs: completionLogprobs(logprobs), finish_reason: finish }),
  delta: (piece, finish, index, logprobs) => ({ index, text: piece, logprobs: completionLogprobs(logprobs), finish_reason: finish }),
};

export const CHAT_COMPLETION: ResponseShape = {
  idPrefix: "chatcmpl",
  object: "chat.completion",
  chunkObject: "chat.completion.chunk",
  choice: (text, finish, index, logprobs) => ({ index, message: { role: "assistant", content: text }, logprobs: chatLogprobs(logprobs), finish_reason: finish }),
  delta: (piece, finish, index, logprobs) => ({ index, delta: piece || finish === null ? { content: piece } : {}, logprobs: chatLogprobs(logprobs), finish_reason: finish }),
  // OpenAI's first chunk of each choice names the role, with no text yet.
  opening: (index) => ({ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }),
};
