/**
 * JSON over HTTP for the server: reading a request's body, and sending answers and refusals as OpenAI
 * shapes them (an `error` object whose type says whose mistake it was).
 */
import type http from "node:http";
import { MlaError, isMlaError, type MlaErrorCode } from "../errors.js";

/**
 * A refusal with its own HTTP status (413: a body too large), the request field it is about (OpenAI's
 * `param`) and, where OpenAI has its own, OpenAI's `code` (`context_length_exceeded`: clients such as
 * LiteLLM and LangChain tell a prompt too long from other refusals by it); else the body's code is ours.
 */
export type WithStatus = MlaError & { httpStatus?: number; param?: string | null; apiCode?: string };

/** A refusal that carries the request field at fault (`param`) or an HTTP status of its own. */
export function refusal(code: MlaErrorCode, message: string, hint: string | undefined, about: { param?: string | null; httpStatus?: number | undefined; apiCode?: string | undefined }): WithStatus {
  return Object.assign(new MlaError(code, message, hint), about);
}

/** HTTP status of a refusal: the caller's mistake, a missing thing, no room, or ours. */
export function statusOf(e: WithStatus): number {
  if (e.httpStatus) return e.httpStatus;
  if (e.code === "BAD_ARGUMENT" || e.code === "BAD_TEXT") return 400;
  if (e.code === "NOT_FOUND") return 404;
  if (e.code === "OUT_OF_MEMORY" || e.code === "INTERRUPTED") return 503;
  return 500;
}

/** A batch's refusal about prompt i: the message names the prompt; `param` stays the field at fault, else the prompt. */
export function aboutPrompt(e: WithStatus, i: number): WithStatus {
  return refusal(e.code, `prompt[${i}]: ${e.message}`, undefined, { param: e.param ?? `prompt[${i}]`, httpStatus: e.httpStatus, apiCode: e.apiCode });
}

/** OpenAI's error body; the message keeps the hint on the same line, `param` names the request field at fault where one is. */
export function errorBody(e: WithStatus): string {
  const type = statusOf(e) < 500 ? "invalid_request_error" : "server_error";
  return JSON.stringify({ error: { message: e.message.replace(/\n\s*hint: /, "; hint: "), type, param: e.param ?? null, code: e.apiCode ?? e.code } });
}

export function sendJson(res: http.ServerResponse, status: number, body: string, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.destroyed) return void res.end();
  // As bytes: a socket counts a queued string in characters (stalledConnections.ts).
  const bytes = Buffer.from(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": bytes.length, ...headers });
  res.end(bytes);
}

export function tooLarge(limit: number): WithStatus {
  return refusal("BAD_ARGUMENT", `the request body passes ${limit} bytes`, "send a shorter prompt", { httpStatus: 413 });
}

/** A request refused while its body was read or checked. After a 413 the rest of the body is not worth reading: the connection closes once the answer is sent. */
export function sendRefusal(res: http.ServerResponse, e: unknown): void {
  const err = asMlaError(e) as WithStatus;
  sendJson(res, statusOf(err), errorBody(err), err.httpStatus === 413 ? { Connection: "close" } : {});
}

export function asMlaError(e: unknown): MlaError {
  return isMlaError(e) ? e : new MlaError("UNSUPPORTED", `internal error: ${(e as Error)?.message ?? String(e)}`, "this is a bug; report it with the request");
}

/**
 * A body declared at most this many times the limit is read and dropped before its 413 goes out:
 * closing a connection with request bytes unread resets it, and the reset can reach the client before
 * the answer. One declared larger still is cut off at once.
 */
const DRAIN_FACTOR = 16;

/**
 * The request's body, at most `limit` bytes, parsed as JSON. One larger is refused once it has ended
 * (its rest read and dropped), so the client gets the 413 instead of a reset connection; one declared
 * past DRAIN_FACTOR × the limit is refused before it is read.
 */
export function readJson(req: http.IncomingMessage, limit: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    if (Number(req.headers["content-length"] ?? 0) > DRAIN_FACTOR * limit) {
      req.resume();
      return reject(tooLarge(limit));
    }
    const parts: Buffer[] = [];
    let size = 0;
    req.on("data", (b: Buffer) => {
      size += b.length;
      if (size <= limit) parts.push(b);
    });
    req.on("end", () => {
      if (size > limit) return reject(tooLarge(limit));
      try {
        resolve(JSON.parse(Buffer.concat(parts).toString("utf8")));
      } catch (e) {
        reject(new MlaError("BAD_ARGUMENT", `the request body is not JSON (${(e as Error).message})`, 'send e.g. {"prompt": "Once upon a time", "max_tokens": 32} with Content-Type: application/json'));
      }
    });
    req.on("error", reject);
  });
}
