/**
 * A streamed response as server-sent events, the way OpenAI frames them: each chunk a `data:` line of
 * JSON carrying the response's id, object, creation time and model, and `data: [DONE]` at the end.
 */
import type http from "node:http";

export class EventStream {
  constructor(
    private readonly res: http.ServerResponse,
    /** What every chunk carries before its own fields. */
    private readonly head: { id: string; object: string; created: number; model: string },
    /** With include_usage every chunk has a usage field, null until the last, as OpenAI sends them. */
    private readonly includeUsage: boolean,
  ) {}

  /** Sends the headers at once, so a client queued behind a full batch sees its stream open. */
  open(): void {
    this.res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    this.res.flushHeaders();
  }

  /** One chunk: `body`'s fields after the head's. */
  chunk(body: Record<string, unknown>): void {
    this.write(`data: ${JSON.stringify({ ...this.head, ...(this.includeUsage ? { usage: null } : {}), ...body })}\n\n`);
  }

  /** An error event (OpenAI's error body), which the end follows. */
  error(body: string): void {
    this.write(`data: ${body}\n\n`);
  }

  /** The end of the stream, and of the response. */
  end(): void {
    this.res.end(Buffer.from("data: [DONE]\n\n"));
  }

  /**
   * Written as bytes, not as a string: a socket counts a queued string in characters, its bytes
   * written in bytes, and close() tells a client that stopped reading by the two (stalledConnections.ts).
   */
  private write(text: string): void {
    this.res.write(Buffer.from(text));
  }
}
