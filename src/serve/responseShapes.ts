/**
 * The OpenAI response bodies of the two generation endpoints: `text_completion` (POST /v1/completions)
 * and `chat.completion` (POST /v1/chat/completions), whole or as stream chunks. Only the choice's
 * shape differs between them; ids, usage and the event framing are the server's.
 */
export type Finish = "stop" | "length";

export interface ResponseShape {
  /** The id's prefix ("cmpl", "chatcmpl"). */
  readonly idPrefix: string;
  /** The `object` of a whole response and of a stream chunk. */
  readonly object: string;
  readonly chunkObject: string;
  /** Choice `index` of a whole response. */
  choice(text: string, finish: Finish, index: number): Record<string, unknown>;
  /** A stream chunk's choice: a piece of text (finish null), or the end (finish set, with the last piece). */
  delta(piece: string, finish: Finish | null, index: number): Record<string, unknown>;
  /** The choice of the chunk that opens a choice's stream, if the shape has one. */
  opening?(index: number): Record<string, unknown>;
}

export const TEXT_COMPLETION: ResponseShape = {
  idPrefix: "cmpl",
  object: "text_completion",
  chunkObject: "text_completion",
  choice: (text, finish, index) => ({ index, text, logprobs: null, finish_reason: finish }),
  delta: (piece, finish, index) => ({ index, text: piece, logprobs: null, finish_reason: finish }),
};

export const CHAT_COMPLETION: ResponseShape = {
  idPrefix: "chatcmpl",
  object: "chat.completion",
  chunkObject: "chat.completion.chunk",
  choice: (text, finish, index) => ({ index, message: { role: "assistant", content: text }, logprobs: null, finish_reason: finish }),
  delta: (piece, finish, index) => ({ index, delta: piece || finish === null ? { content: piece } : {}, logprobs: null, finish_reason: finish }),
  // OpenAI's first chunk of each choice names the role, with no text yet.
  opening: (index) => ({ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }),
};
