/**
 * The server's routes: which path and method does what, behind the API key where one is set. The
 * generation routes are counted in flight until their response has gone (close() waits for them) and
 * refused once the server is closing.
 */
import type http from "node:http";
import crypto from "node:crypto";
import { MlaError } from "../errors.js";
import type { ChatTemplate } from "./chatTemplate.js";
import { CHAT_COMPLETION, TEXT_COMPLETION, type ResponseShape } from "./responseShapes.js";
import { prometheusText } from "./metrics.js";
import { detokenize, tokenize, tokenizerInfo, type TokenizerServed } from "./tokenizerRoutes.js";
import { asMlaError, errorBody, readJson, refusal, sendJson, sendRefusal } from "./httpJson.js";
import { chatPrompts, completionPrompts, type Parse } from "./requestPrompts.js";
import { generation, type GenerationServer } from "./generation.js";
import type { ServerStats } from "./server.js";

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;
type Routes = Record<string, Record<string, Handler>>;

/** The server as its routes see it. */
export interface RoutedServer extends GenerationServer {
  /** The model's chat template (null: none that can be used, `chatProblem` says why where one failed to load). */
  chat: ChatTemplate | null;
  chatProblem: string;
  /** The key /v1/… requests must carry (undefined: none). */
  apiKey: string | undefined;
  /** True once close() has begun. */
  closing(): boolean;
  /** Responses under way, from routing to their end: close() waits for them. */
  inFlight: Set<Promise<void>>;
  stats(): ServerStats;
}

/** The handler of every request the server takes: routed, or refused with 401, 404 or 405. */
export function requestHandler(s: RoutedServer): Handler {
  const { lm, name, chat } = s;

  /** A generation route: refused while closing, counted in flight until its response has gone. */
  const generationRoute =
    (parse: Parse, shape: ResponseShape): Handler =>
    (req, res) => {
      if (s.closing()) return sendJson(res, 503, errorBody(new MlaError("INTERRUPTED", "the server is shutting down", "send the request to another server, or again once it is back")));
      const work = generation(s, req, res, parse, shape).catch((e) => sendJson(res, 500, errorBody(asMlaError(e))));
      // Under way until its response has gone out or its client has left.
      const whole = Promise.all([work, new Promise<void>((r) => res.once("close", () => r()))]).then(() => {});
      s.inFlight.add(whole);
      void whole.then(() => s.inFlight.delete(whole));
    };

  const tokenizerServed: TokenizerServed = { name, tokenizer: lm.tokenizer, vocabSize: lm.config.vocabSize, maxPositions: lm.config.maxPositions, bosTokenId: lm.config.bosTokenId, eosTokenId: lm.config.eosTokenId, chat };
  /** A POST route answering `answer(body)` as JSON, or the refusal it throws. */
  const jsonRoute =
    (answer: (body: unknown) => Record<string, unknown> | Promise<Record<string, unknown>>): Handler =>
    (req, res) =>
      void readJson(req, s.maxBody)
        .then(async (body) => sendJson(res, 200, JSON.stringify(await answer(body))))
        .catch((e) => sendRefusal(res, e));

  const routes: Routes = {
    "/health": { GET: (_q, res) => sendJson(res, s.closing() ? 503 : 200, JSON.stringify({ status: s.closing() ? "closing" : "ok" })) },
    "/v1/models": { GET: (_q, res) => sendJson(res, 200, JSON.stringify({ object: "list", data: [{ id: name, object: "model", created: Math.floor(Date.now() / 1000), owned_by: "mha2mla", max_model_len: lm.config.maxPositions }] })) },
    "/stats": { GET: (_q, res) => sendJson(res, 200, JSON.stringify(s.stats())) },
    "/metrics": {
      GET: (_q, res) => {
        const text = Buffer.from(prometheusText(s.stats()));
        res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4", "Content-Length": text.length });
        res.end(text);
      },
    },
    "/v1/completions": { POST: generationRoute(completionPrompts(lm, name), TEXT_COMPLETION) },
    // vLLM's tokenizer endpoints (lm-evaluation-harness's remote tokenizer reads them).
    "/tokenize": { POST: jsonRoute((body) => tokenize(body, tokenizerServed)) },
    "/detokenize": { POST: jsonRoute((body) => detokenize(body, tokenizerServed)) },
    "/tokenizer_info": { GET: (_q, res) => sendJson(res, 200, JSON.stringify(tokenizerInfo(tokenizerServed))) },
    "/v1/chat/completions": {
      POST: chat
        ? generationRoute(chatPrompts(lm, name, chat), CHAT_COMPLETION)
        : (_q, res) =>
            sendJson(res, 404, errorBody(new MlaError("NOT_FOUND", s.chatProblem ? `this model's chat template cannot be used (${s.chatProblem})` : `this model has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template in ${lm.dir})`, "format the conversation yourself and send it as the prompt of POST /v1/completions"))),
    },
  };

  const expected = s.apiKey === undefined ? null : Buffer.from(`Bearer ${s.apiKey}`);
  /** The Authorization header against the key, in constant time (no timing hint at the key's bytes); the scheme's case is free (RFC 9110: "bearer KEY" too). */
  const authorized = (header: string | undefined): boolean => {
    const got = Buffer.from((header ?? "").replace(/^bearer /i, "Bearer "));
    return expected !== null && got.length === expected.length && crypto.timingSafeEqual(got, expected);
  };

  return (req, res) => {
    // The path as sent (no URL parsing: a malformed request line must not take the server down). A
    // target in absolute form (`GET http://host:port/v1/models`, which proxies send and RFC 9112
    // requires servers to take) is routed on its path.
    const where = (req.url ?? "/").replace(/^https?:\/\/[^/?]*/i, "").split("?")[0] || "/";
    const route = routes[where] as Routes[string] | undefined;
    const method = req.method === "HEAD" ? "GET" : (req.method ?? "");
    const handler = route?.[method] as Handler | undefined;
    if (handler && s.apiKey !== undefined && where !== "/health" && !authorized(req.headers.authorization))
      return sendJson(res, 401, errorBody(refusal("BAD_ARGUMENT", "the request has no valid API key", "send the header Authorization: Bearer KEY with the server's --api-key", { apiCode: "invalid_api_key" })), { "WWW-Authenticate": "Bearer" });
    if (handler) return handler(req, res);
    if (route) return sendJson(res, 405, errorBody(new MlaError("BAD_ARGUMENT", `${where} takes ${Object.keys(route).join(", ")}, not ${req.method}`, `send ${Object.keys(route)[0]} ${where}`)), { Allow: Object.keys(route).join(", ") });
    const known = Object.entries(routes).flatMap(([p, m]) => Object.keys(m).map((k) => `${k} ${p}`)).filter((r) => chat || !r.includes("chat"));
    return sendJson(res, 404, errorBody(new MlaError("NOT_FOUND", `no route ${req.method} ${where}`, `the routes are ${known.join(", ")}`)));
  };
}
