/**
 * close() and clients that stall: a body that stops half-way, a stream its client stops reading, are
 * cut after closeStallMs without a byte moved; requests waiting on the model (queued, or a long
 * answer not streamed) are not, however long they take.
 */
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { serve } from "../../src/serve/server.js";
import { ConnectionWatch } from "../../src/serve/stalledConnections.js";
import { MlaError } from "../../src/errors.js";
import { MODELS, waitFor } from "../helpers.js";

const lm = loadModel(path.join(MODELS, "stories260K"));

/** A logger that keeps its warnings. */
function keptWarnings(): { warnings: string[]; logger: { info(): void; warn(m: string): void } } {
  const warnings: string[] = [];
  return { warnings, logger: { info: () => {}, warn: (m: string) => void warnings.push(m) } };
}

/** A raw connection that sends `head` and `bodyPart` of a POST /v1/completions whose body is `body`, and reads nothing unless asked. */
function rawPost(port: number, body: string, sent = body): net.Socket {
  const socket = net.connect(port, "127.0.0.1");
  socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${sent}`);
  return socket;
}

const closedSocket = (s: net.Socket) => new Promise<void>((r) => (s.destroyed ? r() : s.once("close", () => r())));

test("ConnectionWatch cuts a connection that waits on its client and moves no bytes, not one that waits on the model or moves bytes", async () => {
  const server = new EventEmitter();
  const watch = new ConnectionWatch(server as never);
  const socket = (o: { read?: number; written?: number; queued?: number }) => {
    const s = Object.assign(new EventEmitter(), { bytesRead: o.read ?? 100, bytesWritten: o.written ?? 0, writableLength: o.queued ?? 0, destroyed: false, destroy: () => void (s.destroyed = true) });
    server.emit("connection", s);
    return s;
  };
  const upload = socket({});
  server.emit("request", { socket: upload, complete: false });
  const unread = socket({ written: 5000, queued: 3000 });
  server.emit("request", { socket: unread, complete: true });
  const slowReader = socket({ written: 5000, queued: 3000 });
  server.emit("request", { socket: slowReader, complete: true });
  const waitingOnModel = socket({});
  server.emit("request", { socket: waitingOnModel, complete: true });
  const cut: string[] = [];
  const stop = watch.cutStalled(80, (s, why) => cut.push(`${[upload, unread, slowReader, waitingOnModel].indexOf(s as never)}: ${why}`));
  // The slow reader takes a few bytes now and then.
  const reading = setInterval(() => void (slowReader.writableLength -= 1), 15);
  await new Promise((r) => setTimeout(r, 250));
  clearInterval(reading);
  stop();
  assert.deepEqual(cut.sort(), ["0: its request body stopped arriving", "1: its client stopped reading the response"]);
  assert.deepEqual([upload, unread, slowReader, waitingOnModel].map((s) => s.destroyed), [true, true, false, false]);
});

test("close(): a body that stops half-way is cut after closeStallMs, while a request waiting on the model (queued, not streamed) finishes", async () => {
  const { warnings, logger } = keptWarnings();
  const server = await serve(lm, { port: 0, maxBatch: 1, closeStallMs: 150, logger });
  try {
    const ask = (max: number) => fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "Once upon a time", max_tokens: max, temperature: 0 }) }).then(async (r) => ({ status: r.status, json: (await r.json()) as Record<string, any> }));
    const long = ask(300);
    await waitFor(() => server.stats().running > 0, "the first request to run", 60_000, 2);
    // Queued behind it (maxBatch 1): no byte moves on its connection until its answer.
    const queued = ask(200);
    await waitFor(() => server.stats().waiting > 0, "the second request to queue", 60_000, 2);
    const body = JSON.stringify({ prompt: "Lily", max_tokens: 4 });
    const half = rawPost(server.port, body, body.slice(0, 10));
    await waitFor(() => server.stats().inFlight === 3, "the upload to be under way", 60_000, 2);
    const t0 = performance.now();
    const halfClosed = closedSocket(half);
    await server.close();
    await halfClosed;
    for (const r of await Promise.all([long, queued])) {
      assert.equal(r.status, 200);
      assert.equal(r.json["usage"].completion_tokens > 0, true);
    }
    assert.deepEqual(warnings.filter((w) => /cut the connection/.test(w)).map((w) => w.replace(/from \S+?:\d+/, "from X")), ["closing: cut the connection from X: its request body stopped arriving (no bytes for 0.15 s)"]);
    assert.ok(performance.now() - t0 < 60_000);
  } finally {
    await server.close();
  }
});

test("close(): a stream whose client stopped reading is cut once its socket's buffers are full, its sequences cancelled", async (t) => {
  const { warnings, logger } = keptWarnings();
  const server = await serve(lm, { port: 0, closeStallMs: 300, logger });
  try {
    // Megabytes of output soon: each choice echoes a long prompt's scores with 20 alternatives per token.
    const prompt = Array.from({ length: 400 }, (_, i) => 3 + ((i * 7) % 500));
    const body = JSON.stringify({ prompt, echo: true, logprobs: 20, n: 16, max_tokens: 100, ignore_eos: true, temperature: 1, stream: true });
    const socket = rawPost(server.port, body);
    socket.pause(); // reads nothing
    await waitFor(() => server.stats().running > 0, "the choices to run", 60_000, 2);
    const closed = closedSocket(socket);
    await server.close();
    const s = server.stats();
    if (!warnings.some((w) => /cut the connection/.test(w))) {
      // This machine's socket buffers took the whole answer: the stream ended as it should, nothing stalled.
      assert.equal(s.ended.length, 16);
      t.diagnostic("the socket buffers held the whole stream; nothing to cut");
      socket.destroy();
      return;
    }
    // Reading again, the client finds its connection ended (a paused socket sees no end).
    socket.on("error", () => {});
    socket.resume();
    await closed;
    assert.match(warnings.join("\n"), /its client stopped reading the response \(no bytes for 0\.3 s\)/);
    assert.equal(s.ended.cancelled, 16, "the choices stopped when their client was cut");
    assert.ok(s.newTokens < 1600);
  } finally {
    await server.close();
  }
});

test("serve() refuses a first argument that is neither a model spec nor a loaded model, and a bad closeStallMs", async () => {
  const call = serve as unknown as (m: unknown, o?: unknown) => Promise<unknown>;
  for (const [model, what] of [
    [undefined, "undefined"],
    [null, "null"],
    ["", "an empty string"],
    [42, "a number \\(42\\)"],
    [{ dir: "/m" }, 'an object without "config", "model", "tokenizer"'],
  ] as const)
    await assert.rejects(call(model, {}), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`^serve\\(\\): the model is ${what}, not a model folder, hub id or alias, nor a model from loadModel\\(\\)\n  hint: pass e\\.g\\. serve\\("stories260K"`).test(e.message), String(what));
  for (const v of [0, -1, Number.NaN]) await assert.rejects(call(lm, { port: 0, closeStallMs: v }), /closeStallMs .* is not a duration in milliseconds/);
});
