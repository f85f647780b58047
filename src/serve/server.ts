/**
 * An HTTP server speaking the OpenAI completions and chat protocols (`POST /v1/completions`,
 * `POST /v1/chat/completions`, streamed or not),
 * over one continuous batch (batcher.ts): what `mha2mla serve` runs. Clients written for vLLM or the
 * OpenAI API talk to it unchanged; the point of serving an MLA model from here is its small cache,
 * which admits more sequences into one batch under the same memory.
 *
 * This file starts and stops it: options (serveOptions.ts), the model and its batch, listening, and
 * a close that lets requests in flight finish. What each request gets is routes.ts's, a generation's
 * generation.ts's.
 */
import http from "node:http";
import path from "node:path";
import { MlaError } from "../errors.js";
import { loadModel, type LoadedModel } from "../model/llama.js";
import { defaultKvCache } from "../model/generate.js";
import { selectBackend } from "../backends/select.js";
import { silentLogger } from "../util/log.js";
import { Batcher, type BatcherStats } from "./batcher.js";
import { loadChatTemplate, type ChatTemplate } from "./chatTemplate.js";
import { asMlaError, sendRefusal, tooLarge } from "./httpJson.js";
import { requestHandler } from "./routes.js";
import { ConnectionWatch } from "./stalledConnections.js";
import { checkServedModel, checkServeOptions, type ServeOptions } from "./serveOptions.js";

export type { ServeOptions } from "./serveOptions.js";

export interface ServerStats extends BatcherStats {
  model: string;
  requests: number;
  /** Generation requests being received or answered (what close() waits for). */
  inFlight: number;
  uptimeSeconds: number;
}

export interface Server {
  /** http://host:port */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The name clients send as `model`. */
  readonly model: string;
  /** The loaded model (its tokenizer, config and backend); one the server loaded itself (from a name) is disposed by close(). */
  readonly loaded: LoadedModel;
  stats(): ServerStats;
  /** Stops accepting requests, lets those in flight finish (cutting a connection whose client has stalled: ServeOptions.closeStallMs), then resolves. */
  close(): Promise<void>;
}

/** Starts serving `model` (a folder, alias or bundled name, loaded on opts.device; or a model already loaded). */
export async function serve(model: string | LoadedModel, opts: ServeOptions = {}): Promise<Server> {
  checkServedModel(model);
  // Before the model loads (minutes for a large one), not after.
  const { port, defaultMax, maxBody, batching, closeStallMs } = checkServeOptions(opts);
  const log = opts.logger ?? silentLogger;
  const lm = typeof model === "string" ? loadModel(model, { backend: selectBackend(opts.device ?? "auto", log) }) : model;
  const name = opts.name ?? (typeof model === "string" ? model : path.basename(lm.dir));
  const kvCache = !opts.kvCache || opts.kvCache === "auto" ? defaultKvCache(lm.model) : opts.kvCache;
  const batcher = new Batcher(lm.model, { ...batching, kvCache });
  // A template that does not parse costs the chat endpoint, not the server.
  let chat: ChatTemplate | null = null, chatProblem = "";
  try {
    chat = loadChatTemplate(lm.dir);
  } catch (e) {
    chatProblem = asMlaError(e).message.split("\n")[0]!;
    log.warn(`${chatProblem}: serving without POST /v1/chat/completions`);
  }
  const started = performance.now();
  let requests = 0;
  let closing = false;
  /** Responses under way, from routing to their end: close() waits for them. */
  const inFlight = new Set<Promise<void>>();
  const stats = (): ServerStats => ({ model: name, requests, inFlight: inFlight.size, uptimeSeconds: (performance.now() - started) / 1000, ...batcher.stats() });

  const server = http.createServer(
    requestHandler({ lm, name, batcher, log, maxBody, defaultMax, countRequest: () => void requests++, chat, chatProblem, apiKey: opts.apiKey, closing: () => closing, inFlight, stats }),
  );

  // A kept-alive connection's next request is read only when the event loop is free: behind a prefill
  // chunk of several seconds (the reference backend, a large model on the CPU) Node's 5 s default closed
  // the idle socket first, and the client's pooled request failed with ECONNRESET. 65 s is what load
  // balancers commonly expect of a backend (longer than their own 60 s); shutdown closes idle ones at once.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  const connections = new ConnectionWatch(server);

  // A client that waits for "100 Continue" before sending a body too large (curl does above 1 MB) gets
  // the 413 instead, and sends nothing; any other gets the 100 and is served as usual.
  server.on("checkContinue", (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (Number(req.headers["content-length"] ?? 0) > maxBody) return sendRefusal(res, tooLarge(maxBody));
    res.writeContinue();
    server.emit("request", req, res);
  });

  await new Promise<void>((resolve, reject) => {
    const refused = (e: NodeJS.ErrnoException) =>
      reject(
        e.code === "EADDRINUSE"
          ? new MlaError("BAD_ARGUMENT", `port ${port} on ${opts.host ?? "127.0.0.1"} is in use`, "pass another --port, or --port 0 for any free one")
          : e.code === "EACCES"
            ? new MlaError("BAD_ARGUMENT", `port ${port} needs privileges this process lacks`, "pass a port above 1023")
            : new MlaError("IO", `cannot listen on ${opts.host ?? "127.0.0.1"}:${port}: ${e.message}`, "check --host and --port"),
      );
    server.once("error", refused);
    server.listen(port, opts.host ?? "127.0.0.1", () => {
      server.off("error", refused);
      resolve();
    });
  });
  // Errors after the start (a failed accept, too many open files) are logged; the server goes on.
  server.on("error", (e) => log.warn(`server: ${e.message}`));
  const addr = server.address() as { address: string; port: number };
  const host = opts.host ?? "127.0.0.1";
  let closed: Promise<void> | null = null;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      // No new connections; a request on an open keep-alive connection gets 503.
      closing = true;
      const stopped = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      // Requests in flight finish; one whose client has stalled (closeStallMs) is cut instead.
      const stopCutting = connections.cutStalled(closeStallMs, (socket, why) => log.warn(`closing: cut the connection from ${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}: ${why} (no bytes for ${closeStallMs / 1000} s)`));
      while (inFlight.size) await Promise.all(inFlight);
      stopCutting();
      await batcher.whenIdle();
      batcher.clearPrefixCache();
      server.closeAllConnections();
      await stopped;
      // A model loaded here from a name goes back to the backend (a script may serve one model after
      // another); one passed in loaded is the caller's.
      if (typeof model === "string") lm.model.dispose();
      // A signal that outlives the server (one per process, many servers) must not keep it alive.
      opts.signal?.removeEventListener("abort", abort);
    })());
  const abort = () => {
    // Requests in flight end now, each with a 503 (or an error event on its stream).
    batcher.cancelAll();
    void close();
  };
  if (opts.signal?.aborted) abort();
  else opts.signal?.addEventListener("abort", abort, { once: true });
  const shown = host.includes(":") ? `[${host}]` : host;
  if (opts.apiKey === undefined && !["127.0.0.1", "localhost", "::1"].includes(host)) log.warn(`listening on ${host} without --api-key: anyone who reaches this port can use the model`);
  log.info(`serving ${name} at http://${shown}:${addr.port} (POST /v1/completions${chat ? ", /v1/chat/completions" : ""}, /tokenize, /detokenize; GET /v1/models, /tokenizer_info, /health, /stats, /metrics): ${kvCache} cache, ${perToken(batcher)}; up to ${opts.maxBatch ?? 32} sequences per batch${opts.kvBudgetMb !== undefined ? ` within ${opts.kvBudgetMb} MB of cache` : ""}`);
  return { url: `http://${shown}:${addr.port}`, host, port: addr.port, model: name, loaded: lm, stats, close };
}

/** "N bytes per token", and what the cache holds in memory where that is more (what --kv-budget-mb counts). */
function perToken(batcher: Batcher): string {
  const s = batcher.stats();
  const why = batcher.heldRows.why;
  return `${s.kvBytesPerToken} bytes per token${why ? ` (${s.kvHeldBytesPerToken} held in memory, as the KV budget counts them: ${why})` : ""}`;
}
