/**
 * One generation request (POST /v1/completions or /v1/chat/completions), from its body to its answer:
 * each of its choices submitted to the batch, and their text sent back whole once all have ended, or
 * streamed as it comes. The two endpoints differ only in how a body becomes prompts (requestPrompts.ts)
 * and in the shape of what goes back (responseShapes.ts).
 */
import type http from "node:http";
import crypto from "node:crypto";
import { MlaError } from "../errors.js";
import type { LoadedModel } from "../model/llama.js";
import type { TokenLogprobs } from "../model/sampling.js";
import type { Logger } from "../util/log.js";
import type { Batcher, SequenceEnd, SequenceHandle, SequenceSpec } from "./batcher.js";
import { defaultReplyLimit, seed32, type GenerationFields } from "./completionRequest.js";
import type { ResponseShape, TokenEntry } from "./responseShapes.js";
import { TextStream } from "./textStream.js";
import { ChoiceEntries } from "./choiceEntries.js";
import { EventStream } from "./eventStream.js";
import { aboutPrompt, asMlaError, errorBody, readJson, sendJson, sendRefusal, statusOf } from "./httpJson.js";
import type { Parse, Prompt } from "./requestPrompts.js";

/** What a generation request needs of the server that took it. */
export interface GenerationServer {
  lm: LoadedModel;
  /** The name clients send as `model`. */
  name: string;
  batcher: Batcher;
  log: Logger;
  /** The largest request body in bytes. */
  maxBody: number;
  /** The most new tokens of a request that sets no limit. */
  defaultMax: number;
  /** Counts a request whose choices have all been admitted. */
  countRequest(): void;
}

/** Answers one generation request: `parse` reads its body, `shape` shapes its answer. */
export async function generation(server: GenerationServer, req: http.IncomingMessage, res: http.ServerResponse, parse: Parse, shape: ResponseShape): Promise<void> {
  const { lm, name, batcher, log } = server;
  let prompts: Prompt[], r: GenerationFields;
  // A client can leave while its body is read: its 'close' has gone by when the sequences start.
  let left = false;
  res.once("close", () => (left = true));
  try {
    ({ prompts, fields: r } = await parse(await readJson(req, server.maxBody)));
  } catch (e) {
    return sendRefusal(res, e);
  }
  const id = `${shape.idPrefix}-${crypto.randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  // Choice k answers prompt ⌊k / n⌋, as OpenAI and vLLM index a batch of prompts' choices.
  const n = r.n, count = prompts.length * n;
  const promptOf = (k: number) => prompts[Math.floor(k / n)]!;
  const texts = Array.from({ length: count }, (_, k) => new TextStream(lm.tokenizer, promptOf(k).ids, r.stop, { includeStop: r.includeStop, skipSpecialTokens: r.skipSpecialTokens, promptWhole: promptOf(k).whole }));
  // With logprobs: each choice's token entries (the echoed prompt's, then its tokens').
  const entries = Array.from({ length: count }, (_, k) => new ChoiceEntries(lm.tokenizer, promptOf(k).ids));
  /** Choice k's entries not yet streamed whose offsets are known (null without logprobs); they then count as sent. */
  const unsent = (k: number): TokenEntry[] | null => (r.logprobs === null ? null : entries[k]!.unsent());
  const ends: (SequenceEnd | null)[] = new Array<SequenceEnd | null>(count).fill(null);
  const handles: SequenceHandle[] = [];
  const stream = new EventStream(res, { id, object: shape.chunkObject, created, model: name }, r.includeUsage);
  const finishOf = (end: SequenceEnd) => (end.reason === "length" ? "length" : "stop");
  // An echoed prompt goes out as each choice's first piece: with its scores once they are known
  // (onPrompt: before the choice's first token), else as soon as the stream opens.
  const scorePrompt = r.logprobs !== null && prompts[0]!.echo !== null;
  const echoSent = Array.from({ length: count }, (_, k) => promptOf(k).echo === null);
  const sendEcho = (k: number) => {
    echoSent[k] = true;
    stream.chunk({ choices: [shape.delta(promptOf(k).echo!, null, k, unsent(k))] });
  };
  let done = false;
  const onEnd = (k: number) => (end: SequenceEnd): void => {
    ends[k] = end;
    log.info(`${id}${count > 1 ? `[${k}]` : ""}: ${end.promptTokens} prompt + ${end.newTokens} new tokens, ${end.reason}${end.error ? ` (${end.error.message.split("\n")[0]})` : ""}; queued ${end.queuedMs.toFixed(0)} ms, prefill ${end.prefillMs.toFixed(0)} ms, ${(end.totalMs / 1000).toFixed(2)} s`);
    if (done || res.destroyed) return; // answered already (another choice failed), or the client left
    const failure = end.reason === "error" ? end.error! : end.reason === "cancelled" ? new MlaError("INTERRUPTED", "the server stopped this request as it shut down", "send it again once the server is back") : null;
    if (failure) {
      // One choice failed: the request fails, and its other choices stop.
      done = true;
      for (const h of handles) h.cancel();
      if (!r.stream) return sendJson(res, statusOf(failure), errorBody(failure));
      stream.error(errorBody(failure));
      return stream.end();
    }
    // A choice that ends before its prompt's scores went out (a prompt scored alone) sends them now.
    if (r.stream && !echoSent[k]) sendEcho(k);
    const rest = texts[k]!.finish();
    if (r.logprobs !== null) entries[k]!.settle(true);
    if (r.stream) stream.chunk({ choices: [shape.delta(rest, finishOf(end), k, unsent(k))] });
    if (!ends.every((e) => e !== null)) return;
    done = true;
    // Each prompt counts once, however many choices it has (as OpenAI counts them).
    const promptTokens = prompts.reduce((t, p) => t + p.ids.length, 0);
    const completion = ends.reduce((t, e) => t + e!.newTokens, 0);
    const usage = { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
    if (!r.stream) return sendJson(res, 200, JSON.stringify({ id, object: shape.object, created, model: name, choices: texts.map((t, c) => shape.choice((promptOf(c).echo ?? "") + t.output, finishOf(ends[c]!), c, r.logprobs === null ? null : entries[c]!.all)), usage }));
    if (r.includeUsage) stream.chunk({ choices: [], usage });
    stream.end();
  };
  // A prompt's choice j draws with seed + j: reproducible per choice, different from its siblings, and
  // the same whether its prompt came alone or in a batch.
  const seed = r.seed === null ? crypto.randomInt(2 ** 32) : seed32(r.seed);
  /** Choice k's refusal; a batch's names the prompt it is about. */
  const refusal = (k: number, e: unknown): MlaError => {
    const err = asMlaError(e);
    return prompts.length > 1 ? aboutPrompt(err, Math.floor(k / n)) : err;
  };
  // Without a limit (chat's default), up to --default-max-tokens, the model's positions, and what the
  // KV budget holds after the prompt (a request that did not send max_tokens is not refused for one);
  // a prompt the budget leaves no reply room is refused by the batcher, naming the budget.
  const maxTokensOf = (k: number) => {
    if (r.maxTokens !== null) return r.maxTokens;
    const prompt = promptOf(k).ids.length, limit = defaultReplyLimit(r.minTokens, prompt, server.defaultMax, lm.config.maxPositions);
    const budgetRoom = batcher.fitsTokens() - prompt;
    return budgetRoom >= Math.max(1, r.minTokens) ? Math.min(limit, budgetRoom) : limit;
  };
  const specOf = (k: number): SequenceSpec => ({
    prompt: promptOf(k).ids,
    maxTokens: maxTokensOf(k),
    limit: r.limit,
    sampling: r.sampling,
    stopAtEos: !r.ignoreEos,
    stopTokenIds: r.stopTokenIds,
    minTokens: r.minTokens,
    seed: (seed + (k % n)) >>> 0,
    logprobs: r.logprobs ?? undefined,
    // Each choice scores its prompt itself (so its entries come before its first token's); n > 1 with
    // echo and logprobs prefills the prompt once per choice.
    ...(scorePrompt
      ? {
          promptLogprobs: r.logprobs!,
          onPrompt: (scored: TokenLogprobs[]) => {
            if (done || res.writableEnded) return;
            entries[k]!.addPrompt(promptOf(k), scored);
            if (r.stream) sendEcho(k);
          },
        }
      : {}),
    onToken: (tok, lp) => {
      // Answered already (another choice failed in this same step): nothing more goes out.
      if (done || res.writableEnded) return false;
      const piece = texts[k]!.push(tok);
      // Every generated token is reported, the one that completes a stop string (whose text is
      // cut) too: an entry per token of completion_tokens, as vLLM gives them.
      entries[k]!.record(tok, lp, texts[k]!.decoded);
      if (r.stream && piece) stream.chunk({ choices: [shape.delta(piece, null, k, unsent(k))] });
      return !texts[k]!.hitStop;
    },
    // EOS or a stop token id: its entry, as the text it adds nowhere (it goes out with the end).
    onEndToken: (tok, lp) => entries[k]!.record(tok, lp, ""),
    onEnd: onEnd(k),
  });
  // Made one at a time as submitAll checks them: a default limit that refuses choice k (no room left)
  // comes after the checks of the choices before it, so the first refusal in order is the request's.
  function* choices(): Generator<SequenceSpec> {
    for (let k = 0; k < count; k++) yield specOf(k);
  }
  // All choices or none: a refusal of prompt[1] then cancels none of prompt[0]'s (which /stats would
  // count as cancelled sequences of a request that never ran).
  try {
    handles.push(...batcher.submitAll(choices(), refusal));
  } catch (e) {
    return sendJson(res, statusOf(asMlaError(e)), errorBody(asMlaError(e)));
  }
  server.countRequest();
  if (r.stream) {
    stream.open();
    if (shape.opening) for (let k = 0; k < count; k++) stream.chunk({ choices: [shape.opening(k)] });
    if (!scorePrompt) for (let k = 0; k < count; k++) if (!echoSent[k]) sendEcho(k);
  }
  // A write to a connection that just failed must not become an uncaught error: the close below ends the request.
  res.on("error", () => {});
  // A client that goes away stops its sequences (their places and caches go to the next request).
  const leave = () => {
    if (!done) for (const h of handles) h.cancel();
  };
  if (left) leave();
  else res.on("close", leave);
}
