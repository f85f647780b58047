/**
 * `serve` over HTTP: the OpenAI completions protocol (plain and streamed), answers equal to generate(),
 * refusals as OpenAI error bodies naming the culprit, a client that leaves cancels its sequence, and
 * close() finishing what is in flight. The command itself: started, asked, stopped with SIGINT.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { generate } from "../../src/model/generate.js";
import { kvBytesPerToken, kvElemsPerToken } from "../../src/model/config.js";
import { serve } from "../../src/serve/server.js";
import { MlaError } from "../../src/errors.js";
import { FIXTURES, MODELS, ROOT, tmpDir, waitFor } from "../helpers.js";
import { cleanUpSpaces } from "../../src/io/cleanUpSpaces.js";

const lm = loadModel(path.join(MODELS, "stories260K"));
const bos = lm.config.bosTokenId;

/** The text `ids` add after the prompt ids `p`, as a completion gives it (BOS left out). */
function continuation(p: readonly number[], ids: readonly number[]): string {
  const strip = (x: readonly number[]) => x.filter((t) => t !== bos);
  return lm.tokenizer.decode(strip([...p, ...ids])).slice(lm.tokenizer.decode(strip(p)).length);
}

/** What generate() continues `prompt` with, as text. */
function expected(prompt: string, maxTokens: number): string {
  const p = lm.tokenizer.encode(prompt, { addSpecialTokens: true });
  return continuation(p, generate(lm.model, p, { maxTokens }).ids.filter((t) => t !== lm.config.eosTokenId));
}

async function post(url: string, body: unknown): Promise<{ status: number; json: Record<string, any> }> {
  const r = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) });
  return { status: r.status, json: (await r.json()) as Record<string, any> };
}

/** Each body is refused with a 400 whose message matches. */
async function assertRefused(url: string, cases: readonly (readonly [unknown, RegExp])[]): Promise<void> {
  for (const [body, message] of cases) {
    const bad = await post(url, body);
    assert.equal(bad.status, 400, JSON.stringify(body));
    assert.match(bad.json["error"].message, message);
  }
}

/** The text each token adds to `text` by its `offsets` (in code points), the last running to the end. */
function spansOf(text: string, offsets: readonly number[]): string[] {
  const chars = [...text];
  return offsets.map((o, k) => chars.slice(o, offsets[k + 1] ?? chars.length).join(""));
}

/** The events of a streamed completion, parsed, up to [DONE]. */
async function events(url: string, body: unknown): Promise<Record<string, any>[]> {
  const r = await fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify({ ...(body as object), stream: true }) });
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /text\/event-stream/);
  const text = await r.text();
  const data = text.split("\n\n").filter((x) => x.startsWith("data: ")).map((x) => x.slice(6));
  assert.equal(data[data.length - 1], "[DONE]");
  return data.slice(0, -1).map((d) => JSON.parse(d) as Record<string, any>);
}

test("completions, plain and streamed, decoded together, equal generate(); models, health and stats answer", async () => {
  const server = await serve(lm, { port: 0, name: "tiny", maxBatch: 3 });
  try {
    const models = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { id: string; max_model_len: number }[] };
    assert.deepEqual(models.data.map((m) => [m.id, m.max_model_len]), [["tiny", 512]]);
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
    const asks = [["Once upon a time", 30], ["The dog", 12], ["Lily saw a bird", 20], ["One day", 25]] as const;
    const [a, b, c, d] = await Promise.all([
      post(server.url, { model: "tiny", prompt: asks[0][0], max_tokens: asks[0][1], temperature: 0 }),
      events(server.url, { prompt: asks[1][0], max_tokens: asks[1][1], temperature: 0, stream_options: { include_usage: true } }),
      post(server.url, { prompt: asks[2][0], max_tokens: asks[2][1], temperature: 0 }),
      events(server.url, { prompt: asks[3][0], max_tokens: asks[3][1], temperature: 0 }),
    ]);
    assert.equal(a.status, 200);
    assert.equal(a.json["object"], "text_completion");
    assert.equal(a.json["model"], "tiny");
    assert.equal(a.json["choices"][0].text, expected(asks[0][0], asks[0][1]));
    assert.equal(a.json["choices"][0].finish_reason, "length");
    assert.deepEqual(a.json["usage"], { prompt_tokens: lm.tokenizer.encode(asks[0][0], { addSpecialTokens: true }).length, completion_tokens: 30, total_tokens: lm.tokenizer.encode(asks[0][0], { addSpecialTokens: true }).length + 30 });
    assert.equal(c.json["choices"][0].text, expected(asks[2][0], asks[2][1]));
    const streamed = (evs: Record<string, any>[]) => evs.filter((e) => e["choices"].length).map((e) => e["choices"][0].text as string).join("");
    assert.equal(streamed(b), expected(asks[1][0], asks[1][1]));
    assert.equal(streamed(d), expected(asks[3][0], asks[3][1]));
    assert.ok(d.length > 5, "streamed in several events");
    assert.deepEqual(d.slice(0, -1).map((e) => e["choices"][0].finish_reason), new Array(d.length - 1).fill(null));
    assert.equal(d[d.length - 1]!["choices"][0].finish_reason, "length");
    assert.equal(b[b.length - 1]!["usage"].completion_tokens, 12, "include_usage adds a last event with the usage");
    assert.equal(new Set(d.map((e) => e["id"])).size, 1, "one id per completion");
    const stats = (await (await fetch(`${server.url}/stats`)).json()) as Record<string, number>;
    assert.equal(stats["requests"], 4);
    assert.equal(stats["newTokens"], 30 + 12 + 20 + 25);
  } finally {
    await server.close();
  }
});

test("a stop string ends the completion before it, plain and streamed; sampled answers follow the seed", async () => {
  const server = await serve(lm, { port: 0 });
  try {
    const full = expected("Once upon a time", 40);
    const cut = full.indexOf(".");
    assert.ok(cut > 0);
    const r = await post(server.url, { prompt: "Once upon a time", max_tokens: 40, temperature: 0, stop: ["."] });
    assert.equal(r.json["choices"][0].text, full.slice(0, cut));
    assert.equal(r.json["choices"][0].finish_reason, "stop");
    const evs = await events(server.url, { prompt: "Once upon a time", max_tokens: 40, temperature: 0, stop: "." });
    assert.equal(evs.map((e) => e["choices"][0].text).join(""), full.slice(0, cut));
    const ask = { prompt: "The cat", max_tokens: 16, temperature: 1, top_p: 0.9, top_k: 20, seed: 5 };
    const [x, y] = await Promise.all([post(server.url, ask), post(server.url, ask)]);
    assert.equal(x.json["choices"][0].text, y.json["choices"][0].text, "the same seed draws the same text, in one batch");
  } finally {
    await server.close();
  }
});

test("ignore_eos generates past the model's stop tokens, to exactly max_tokens", async () => {
  // stories260K never ends a story within a few hundred tokens: make the fifth greedy token a stop token.
  const stopping = loadModel(path.join(MODELS, "stories260K"));
  const ids = generate(stopping.model, stopping.tokenizer.encode("Once upon a time"), { maxTokens: 5, temperature: 0 }).ids;
  (stopping.model.config as { stopTokenIds?: readonly number[] }).stopTokenIds = [ids[4]!];
  const server = await serve(stopping, { port: 0, name: "tiny" });
  try {
    const ends = await post(server.url, { prompt: "Once upon a time", max_tokens: 30, temperature: 0 });
    assert.equal(ends.json["choices"][0].finish_reason, "stop");
    assert.ok(ends.json["usage"].completion_tokens <= 5);
    const past = await post(server.url, { prompt: "Once upon a time", max_tokens: 30, temperature: 0, ignore_eos: true });
    assert.equal(past.json["choices"][0].finish_reason, "length");
    assert.equal(past.json["usage"].completion_tokens, 30);
  } finally {
    await server.close();
  }
});

/** A JSON list nested 5,000 deep: JSON.parse reads it, JSON.stringify of it overflows the stack. */
const DEEP = "[".repeat(5000) + "1" + "]".repeat(5000);

test("bad requests get OpenAI error bodies that name the culprit; unknown routes and chat are 404", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    const cases: [unknown, number, RegExp][] = [
      ["{not json", 400, /not JSON/],
      [[1, 2], 400, /not a JSON object/],
      [{ prompt: "x", max_tokens: 4, bogus: 1 }, 400, /unknown field "bogus"/],
      [{ prompt: "x", n: 17 }, 400, /n 17 is not a whole number from 1 to 16/],
      [{ prompt: "x", best_of: 2 }, 400, /best_of 2 is not supported/],
      [{ prompt: "x", logprobs: 21 }, 400, /logprobs 21 is not a whole number from 0 to 20/],
      [{ prompt: "x", echo: "yes" }, 400, /echo "yes" is not true or false/],
      [{ prompt: "x", model: "gpt-4" }, 404, /model "gpt-4" is not served here.*"tiny"/],
      [{ max_tokens: 3 }, 400, /no prompt/],
      [{ prompt: Array.from({ length: 65 }, () => "a") }, 400, /prompt holds 65 prompts.*at most 64/],
      [{ prompt: ["a", 5] }, 400, /prompt \["a",5\] is neither text nor a list of token ids/],
      [{ prompt: [[1], []] }, 400, /prompt\[1\] is an empty list of token ids/],
      [{ prompt: [[1], [1, 99999]] }, 400, /prompt\[1\] token id 99999 is outside the vocabulary/],
      [{ prompt: ["a", "b", "c", "d", "e"], n: 16 }, 400, /5 prompts × n 16 make 80 sequences/],
      [{ prompt: ["a", "b"], max_tokens: 511 }, 400, /prompt\[0\]: the prompt's 2 tokens \+ max_tokens 511/],
      [{ prompt: [] }, 400, /the prompt is an empty list/],
      [{ prompt: [1, 99999] }, 400, /token id 99999 is outside the vocabulary of 512/],
      [{ prompt: "x", max_tokens: 0 }, 400, /max_tokens 0 asks for no tokens.*echo: true/],
      [{ prompt: "x", max_tokens: -1 }, 400, /max_tokens -1 is not a whole number ≥ 1; hint: .*leave it out \(default 16\)/],
      [{ prompt: "x", max_tokens: 600 }, 400, /pass the model.s 512 positions.*hint: send max_tokens ≤ 509, or shorten the prompt/],
      [{ prompt: "x", temperature: -1 }, 400, /temperature -1/],
      [{ prompt: "x", top_p: 0 }, 400, /top_p 0/],
      [{ prompt: "x", stop: [""] }, 400, /empty string/],
      [{ prompt: "x", ignore_eos: "yes" }, 400, /ignore_eos "yes" is not true or false/],
      [{ prompt: "x", stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, 400, /stop holds 17 strings.*at most 16/],
      [{ prompt: "x", stream_options: { include_usage: true } }, 400, /without stream: true/],
      [{ prompt: "x", stream: true, stream_options: { include_usage: "yes" } }, 400, /include_usage "yes" is not true or false/],
      [{ prompt: "x", stream: true, stream_options: { bogus: 1 } }, 400, /unknown stream_options field "bogus"/],
      // Values nested deeper than JSON.stringify's stack (JSON.parse takes them) are refused as 400s, not 500s.
      [`{"prompt": ${DEEP}}`, 400, /prompt\[0\] a list nested too deeply to show is neither text/],
      [`{"prompt": "x", "max_tokens": ${DEEP}}`, 400, /max_tokens a list nested too deeply to show is not/],
      [`{"prompt": "x", "model": ${DEEP}}`, 404, /model a list nested too deeply to show is not served here/],
      [`{"prompt": "x", "stop": ${DEEP}}`, 400, /stop a list nested too deeply to show is neither/],
      [{ prompt: "x", max_tokens: "9".repeat(5000) }, 400, /max_tokens "9{59}… is not a whole number/],
      // JSON.parse reads an overflowing number as Infinity: the refusal names it, not "null".
      ['{"prompt": "x", "max_tokens": 1e400}', 400, /max_tokens Infinity is not a whole number/],
      ['{"prompt": "x", "temperature": -1e400}', 400, /temperature -Infinity is not a number ≥ 0/],
      ['{"prompt": "x", "seed": 1e400}', 400, /seed Infinity is not a whole number/],
      // Beyond 2^53 two seeds parse to one number: refused, not wrapped into another request's seed.
      ['{"prompt": "x", "seed": 1e300}', 400, /seed 1e\+300 is beyond ±2\^53/],
      // "5" and "05" are one token: both biases cannot apply.
      [{ prompt: "x", logit_bias: { "5": 100, "05": -100 } }, 400, /logit_bias names token 5 twice \("5" and "05"\)/],
    ];
    for (const [body, status, message] of cases) {
      const r = await post(server.url, body);
      assert.equal(r.status, status, JSON.stringify(body));
      assert.match(r.json["error"].message, message, JSON.stringify(body));
      assert.ok(!r.json["error"].message.includes("\n"), "one line");
      assert.equal(r.json["error"].type, "invalid_request_error");
      // OpenAI's code where it has one (a model not served), else ours.
      assert.equal(r.json["error"].code, status === 404 ? "model_not_found" : "BAD_ARGUMENT", JSON.stringify(body));
    }
    // OpenAI's `param`: the request field a refusal is about, null where it is about no one field.
    const params: [object, string | null][] = [
      [{ prompt: "x", max_tokens: -1 }, "max_tokens"],
      [{ max_tokens: 3 }, "prompt"],
      [{ prompt: [[1], []] }, "prompt[1]"],
      [{ prompt: ["a", "b"], max_tokens: 511 }, "max_tokens"],
      [{ prompt: ["a", [1, 99999]] }, "prompt[1]"],
      [{ prompt: "x", bogus: 1 }, "bogus"],
      [{ prompt: "x", stream: true, stream_options: { include_usage: "yes" } }, "stream_options.include_usage"],
      [{ prompt: "x", stream: true, stream_options: { bogus: 1 } }, "stream_options.bogus"],
      [{ prompt: "x", model: "gpt-4" }, "model"],
      [{ prompt: "x", logit_bias: { "5": 100, "05": -100 } }, "logit_bias"],
      [{ prompt: ["a", "b", "c", "d", "e"], n: 16 }, null],
    ];
    for (const [body, param] of params) assert.equal((await post(server.url, body)).json["error"].param, param, JSON.stringify(body));
    const chat = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: "{}" });
    assert.equal(chat.status, 404);
    assert.match(((await chat.json()) as { error: { message: string } }).error.message, /this model has no chat template.*POST \/v1\/completions/);
    const other = await fetch(`${server.url}/v2/nothing`);
    assert.equal(other.status, 404);
    assert.match(((await other.json()) as { error: { message: string } }).error.message, /no route GET \/v2\/nothing.*POST \/v1\/completions/);
    assert.equal(server.stats().requests, 0, "refused requests start nothing");
  } finally {
    await server.close();
  }
});

test("a prompt of more bytes than the model's positions of the longest token (9 bytes here) is refused untokenized, with the same error", async () => {
  const server = await serve(lm, { port: 0 });
  const encode = lm.tokenizer.encode;
  const seen: number[] = [];
  lm.tokenizer.encode = function (text, o) {
    seen.push(text.length);
    return encode.call(this, text, o);
  };
  try {
    // 512 positions × 9 bytes: one byte more cannot fit, whatever it holds; 1537 characters of 3 bytes count as bytes.
    for (const prompt of [" ".repeat(512 * 9 + 1), "猫".repeat(1537), "Once upon a time there was a dog. ".repeat(60_000)]) {
      const r = await post(server.url, { prompt });
      assert.equal(r.status, 400);
      assert.equal(r.json["error"].message, "the prompt holds more than the model's maximum context length of 512 tokens; hint: shorten the prompt");
      // OpenAI's own code, by which clients tell a prompt too long from other refusals.
      assert.equal(r.json["error"].code, "context_length_exceeded");
    }
    assert.deepEqual(seen, [], "nothing was tokenized");
    // Within the bound the prompt is tokenized (a run of spaces takes a token per "▁▁▁" at most here).
    const fits = await post(server.url, { prompt: " ".repeat(512 * 9), max_tokens: 1 });
    assert.equal(fits.status, 400);
    assert.match(fits.json["error"].message, /more than the model's maximum context length of 512 tokens/);
    assert.ok(seen.length > 0);
  } finally {
    lm.tokenizer.encode = encode;
    await server.close();
  }
});

test("a client that leaves mid-stream cancels its sequence; close() finishes what is in flight and takes no more", async () => {
  const server = await serve(lm, { port: 0, maxBatch: 1 });
  const abort = new AbortController();
  const r = await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "Once", max_tokens: 400, temperature: 0, stream: true }), signal: abort.signal });
  const reader = r.body!.getReader();
  await reader.read();
  abort.abort();
  await waitFor(() => server.stats().ended.cancelled > 0, "the cancelled sequence to end", 60_000);
  assert.equal(server.stats().ended.cancelled, 1);
  assert.ok(server.stats().newTokens < 400);

  const inFlight = post(server.url, { prompt: "Once upon a time", max_tokens: 60, temperature: 0 });
  await waitFor(() => server.stats().running > 0, "the sequence to run", 60_000, 2);
  const closed = server.close();
  const done = await inFlight;
  assert.equal(done.status, 200);
  assert.equal(done.json["choices"][0].text, expected("Once upon a time", 60));
  await closed;
  await assert.rejects(fetch(`${server.url}/health`), "no longer listening");
});

test("serve() refuses bad options; a port in use is named", async () => {
  await assert.rejects(serve(lm, { port: 70000 }), /--port 70000 is not a TCP port/);
  await assert.rejects(serve(lm, { port: 0, kvCache: "fp8" as never }), /--kv-cache fp8/);
  await assert.rejects(serve(lm, { port: 0, kvBudgetMb: 0 }), /--kv-budget-mb 0/);
  await assert.rejects(serve(lm, { port: 0, maxBatch: 0 }), /--max-batch 0/);
  // Refused before the model is loaded: the model named here does not exist.
  await assert.rejects(serve("no-such-model", { port: 0, maxBatch: 0 }), /--max-batch 0 is not a number of sequences/);
  await assert.rejects(serve("no-such-model", { port: 0, prefillChunk: -1 }), /--prefill-chunk -1 is not a token count/);
  await assert.rejects(serve(lm, { port: 0, bogus: 1 } as never), /serve\(\) has no option "bogus"/);
  // maxBodyBytes: a whole number of bytes a request body can have, and that JavaScript can parse.
  for (const v of [0, -1, 1.5, NaN, Infinity, 2 ** 40])
    await assert.rejects(serve(lm, { port: 0, maxBodyBytes: v }), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && new RegExp(`maxBodyBytes ${v} is not a body size in bytes\n  hint: pass a whole number from 1 to \\d+`).test(e.message), String(v));
  const first = await serve(lm, { port: 0 });
  try {
    await assert.rejects(serve(lm, { port: first.port }), new RegExp(`port ${first.port} on 127.0.0.1 is in use[^]*--port 0`));
  } finally {
    await first.close();
  }
});

test("mha2mla serve answers, then stops on SIGINT after finishing", async () => {
  const child = spawn(process.execPath, [path.join(ROOT, "dist/src/cli/main.js"), "serve", path.join(MODELS, "stories260K"), "--port", "0", "--device", "reference", "--served-model-name", "s"], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (b: Buffer) => (err += b.toString()));
  // 'close', not 'exit': the output streams are read to their end.
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  try {
    await waitFor(() => /serving s at (http:\S+)/.test(err) || child.exitCode !== null, "serve's start line");
    const url = /serving s at (http:\S+)/.exec(err)?.[1];
    assert.ok(url, err);
    const r = await post(url, { prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
    assert.equal(r.json["choices"][0].text, expected("Once upon a time", 8));
    child.kill("SIGINT");
    assert.equal(await exited, 0);
    assert.match(err, /served 1 request, 8 new tokens; stopped/);
    assert.match(err, /cmpl-\w+: \d+ prompt \+ 8 new tokens, length/);
  } finally {
    // A failure above must not leave the server running (its pipes would keep this test file alive).
    if (child.exitCode === null) child.kill("SIGKILL");
  }
});

test("HTTP hygiene: a malformed request line, a body over the limit (413), a wrong method (405), HEAD, empty and nested prompts", async () => {
  const net = await import("node:net");
  const server = await serve(lm, { port: 0, maxBodyBytes: 1000 });
  try {
    const raw = await new Promise<string>((resolve) => {
      const sock = net.connect(server.port, "127.0.0.1", () => sock.write("GET //[ HTTP/1.1\r\nHost: x\r\n\r\n"));
      let got = "";
      sock.on("data", (b) => ((got += b.toString()), sock.end()));
      sock.on("close", () => resolve(got));
    });
    assert.match(raw, /^HTTP\/1.1 404/, "a malformed path is an unknown route, not a crash");
    assert.equal((await fetch(`${server.url}/health`)).status, 200, "still serving");
    const big = await post(server.url, { prompt: "x".repeat(2000) });
    assert.equal(big.status, 413);
    assert.match(big.json["error"].message, /passes 1000 bytes/);
    assert.equal(big.json["error"].type, "invalid_request_error");
    // A client that waits for "100 Continue" (curl, above 1 MB) gets the 413 instead, before it sends the body.
    const http = await import("node:http");
    const early = await new Promise<{ status: number; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = http.request(`${server.url}/v1/completions`, { method: "POST", headers: { "Content-Length": 2000, Expect: "100-continue" } }, (res) => (res.resume(), res.on("end", () => resolve({ status: res.statusCode!, continued }))));
      req.on("continue", () => ((continued = true), req.end("x".repeat(2000))));
      req.on("error", reject);
      req.flushHeaders();
    });
    assert.deepEqual(early, { status: 413, continued: false });
    const small = await new Promise<number>((resolve, reject) => {
      const body = JSON.stringify({ prompt: "x", max_tokens: 1 });
      const req = http.request(`${server.url}/v1/completions`, { method: "POST", headers: { "Content-Length": Buffer.byteLength(body), Expect: "100-continue" } }, (res) => (res.resume(), res.on("end", () => resolve(res.statusCode!))));
      req.on("continue", () => req.end(body));
      req.on("error", reject);
      req.flushHeaders();
    });
    assert.equal(small, 200, "a body within the limit is asked for and served");
    const wrong = await fetch(`${server.url}/v1/completions`);
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get("allow"), "POST");
    assert.equal((await fetch(`${server.url}/health`, { method: "HEAD" })).status, 200);
    const empty = await post(server.url, { prompt: "", max_tokens: 3, temperature: 0 });
    assert.equal(empty.status, 200, "an empty text is BOS alone");
    assert.equal(empty.json["usage"].prompt_tokens, 1);
    const nested = await post(server.url, { prompt: [[1, 403]], max_tokens: 2, temperature: 0 });
    assert.equal(nested.status, 200, "a list holding one list of ids");
    const chosenOnly = await post(server.url, { prompt: "x", max_tokens: 2, logprobs: 0 });
    assert.equal(chosenOnly.status, 200, "logprobs 0 asks for the chosen tokens' log-probabilities alone");
    // Each step's top_logprobs holds the sampled token (up to logprobs + 1 entries, as OpenAI and vLLM give them).
    const lp0 = chosenOnly.json["choices"][0].logprobs;
    assert.deepEqual(lp0.top_logprobs, lp0.tokens.map((t: string, k: number) => ({ [t]: lp0.token_logprobs[k] })));
  } finally {
    await server.close();
  }
});

test("a request target in absolute form (http://host:port/path, as proxies send it) is routed on its path", async () => {
  const net = await import("node:net");
  const server = await serve(lm, { port: 0, name: "tiny" });
  const raw = (head: string, body = "") =>
    new Promise<string>((resolve) => {
      const sock = net.connect(server.port, "127.0.0.1", () => sock.write(`${head}\r\nHost: 127.0.0.1:${server.port}\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`));
      let got = "";
      sock.on("data", (b) => (got += b.toString()));
      sock.on("close", () => resolve(got));
    });
  const json = (r: string) => JSON.parse(r.slice(r.indexOf("\r\n\r\n") + 4)) as Record<string, any>;
  try {
    const models = await raw(`GET http://127.0.0.1:${server.port}/v1/models HTTP/1.1`);
    assert.match(models, /^HTTP\/1.1 200 /);
    assert.equal(json(models)["data"][0].id, "tiny");
    assert.match(await raw(`GET HTTP://localhost/health?probe=1 HTTP/1.1`), /^HTTP\/1.1 200 /, "any host, the scheme in any case, a query");
    const done = await raw(`POST http://127.0.0.1:${server.port}/v1/completions HTTP/1.1`, JSON.stringify({ prompt: "Once upon a time", max_tokens: 8, temperature: 0 }));
    assert.equal(json(done)["choices"][0].text, expected("Once upon a time", 8));
    const root = await raw(`GET http://127.0.0.1:${server.port} HTTP/1.1`);
    assert.match(root, /^HTTP\/1.1 404 /);
    assert.match(json(root)["error"].message, /^no route GET \/;/, "no path is the root's");
    assert.match(await raw(`GET http://127.0.0.1:${server.port}/v1/completions HTTP/1.1`), /^HTTP\/1.1 405 /);
  } finally {
    await server.close();
  }
});

test("logprobs: each generated token's log-probability under the model and its most likely alternatives, plain and streamed", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    const ask = { prompt: "Once upon a time", max_tokens: 8, temperature: 0, logprobs: 3 };
    const r = await post(server.url, ask);
    const c = r.json["choices"][0];
    const lp = c.logprobs;
    assert.equal(lp.tokens.length, 8);
    assert.equal(lp.tokens.join(""), c.text, "the tokens' texts make the completion");
    assert.deepEqual(lp.text_offset, lp.tokens.map((_: string, k: number) => lp.tokens.slice(0, k).join("").length));
    // Against one forward over the prompt and the generated tokens: the log-softmax of each step's row.
    const p = lm.tokenizer.encode(ask.prompt, { addSpecialTokens: true });
    const gen = generate(lm.model, p, { maxTokens: 8 }).ids;
    const V = lm.config.vocabSize;
    const logits = lm.model.forward(Int32Array.from([...p, ...gen.slice(0, -1)])).toArray();
    gen.forEach((id, k) => {
      const row = logits.subarray((p.length - 1 + k) * V, (p.length + k) * V);
      const max = Math.max(...row);
      const norm = max + Math.log(Array.from(row).reduce((a, x) => a + Math.exp(x - max), 0));
      assert.ok(Math.abs(lp.token_logprobs[k] - (row[id]! - norm)) < 1e-4, `token ${k}`);
      const top = Object.values(lp.top_logprobs[k] as Record<string, number>);
      assert.ok(top.length >= 1 && top.length <= 3);
      assert.ok(Math.abs(Math.max(...top) - lp.token_logprobs[k]) < 1e-6, "greedy: the chosen token is the most likely");
    });
    const evs = await events(server.url, ask);
    const streamed = evs.flatMap((e) => e["choices"][0]?.logprobs?.tokens ?? []);
    assert.deepEqual(streamed, lp.tokens, "streamed, each chunk carries its tokens'");
    assert.deepEqual(evs.flatMap((e) => e["choices"][0]?.logprobs?.text_offset ?? []), lp.text_offset);
    // A stop string: the tokens up to the one that completes it, that one too.
    const cut = await post(server.url, { ...ask, max_tokens: 40, stop: ["."] });
    const cutLp = cut.json["choices"][0].logprobs;
    assert.ok(cutLp.tokens.join("").startsWith(cut.json["choices"][0].text + "."));
    assert.equal(cutLp.tokens.length, cut.json["usage"].completion_tokens, "an entry per generated token");
  } finally {
    await server.close();
  }
});

test("logprobs end with the token that ended the sequence (EOS, a stop token id), plain and streamed; prompts of ids that end inside a character are answered and echoed once", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    const eos = lm.config.eosTokenId!;
    const name = lm.tokenizer.decode([eos], { skipSpecialTokens: false });
    const atEos = { prompt: "Once", max_tokens: 5, temperature: 0, logit_bias: { [String(eos)]: 100 }, logprobs: 1 };
    const p = lm.tokenizer.encode("Once", { addSpecialTokens: true });
    const third = generate(lm.model, p, { maxTokens: 3, stopAtEos: false }).ids[2]!;
    for (const body of [atEos, { ...atEos, logit_bias: {}, ignore_eos: true, stop_token_ids: [third] }]) {
      const ended = await post(server.url, body);
      const c = ended.json["choices"][0];
      assert.equal(c.finish_reason, "stop");
      assert.equal(c.logprobs.tokens.length, ended.json["usage"].completion_tokens, JSON.stringify(body));
      assert.equal(c.logprobs.tokens.length, body === atEos ? 1 : 3);
      if (body === atEos) assert.deepEqual([c.text, c.logprobs.tokens], ["", [name]], "the EOS's entry, not its text");
      const streamed = (await events(server.url, body)).flatMap((e) => e["choices"][0]?.logprobs?.tokens ?? []);
      assert.deepEqual(streamed, c.logprobs.tokens, "streamed: the ending token's entry goes out with the end");
    }
    // Byte tokens: 0xC3 and 0xA9 make "é". A prompt of one incomplete byte is answered (decoding no ids once failed).
    const [c3, a9] = [198, 172];
    assert.equal(lm.tokenizer.decode([c3, a9]), "é", "the byte tokens of é");
    const alone = await post(server.url, { prompt: [c3], max_tokens: 3, temperature: 0 });
    assert.equal(alone.status, 200, JSON.stringify(alone.json));
    const echoed = await post(server.url, { prompt: [bos!, 403, c3], max_tokens: 1, temperature: 0, logit_bias: { [String(a9)]: 100 }, echo: true });
    assert.equal(echoed.json["choices"][0].text, lm.tokenizer.decode([bos!, 403], { skipSpecialTokens: true }) + "é", "the byte once, in the completion's whole character");
  } finally {
    await server.close();
  }
});

test("text_offset: in code points, each byte of a character split over tokens begins where it does; plain and streamed alike, for every prompt and choice", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    // "Once" and 😀's first three bytes (ids that end inside a character), then its last byte, forced.
    const emoji = [243, 162, 155], last = 131;
    assert.equal(lm.tokenizer.decode([403, ...emoji, last]), "Once😀");
    const ask = { prompt: [[bos!, 403, ...emoji], [bos!, ...emoji]], n: 2, max_tokens: 1, temperature: 0, logit_bias: { [String(last)]: 100 }, logprobs: 0 };
    for (const echo of [false, true]) {
      const r = await post(server.url, { ...ask, echo });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const evs = await events(server.url, { ...ask, echo });
      r.json["choices"].forEach((c: Record<string, any>, k: number) => {
        const head = k < 2 ? "Once" : "";
        assert.equal(c.text, (echo ? head : "") + "😀");
        // The prompt's incomplete bytes add nothing to the echo (the completion gives the character whole).
        const want = echo ? ["", ...(head ? [head] : []), "", "", "", "😀"] : ["😀"];
        assert.deepEqual(spansOf(c.text, c.logprobs.text_offset), want, `choice ${k}, echo ${echo}`);
        assert.deepEqual(c.logprobs.tokens.slice(-(echo ? 4 : 1)), Array(echo ? 4 : 1).fill("\uFFFD"), "each byte short of a whole character reads as U+FFFD");
        assert.equal(c.logprobs.text_offset.at(-1), echo ? head.length : 0, "counted in code points: 😀 is one");
        const mine = evs.flatMap((e) => e["choices"]).filter((x: Record<string, any>) => x.index === k);
        assert.deepEqual(mine.flatMap((x: Record<string, any>) => x.logprobs?.text_offset ?? []), c.logprobs.text_offset, `choice ${k} streamed`);
      });
    }
  } finally {
    await server.close();
  }
});

test("text_offset of an echoed text prompt that begins with several spaces: each token where its text is in the echo", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    for (const prompt of ["   x y", "  lead"]) {
      const r = await post(server.url, { prompt, max_tokens: 2, temperature: 0, logprobs: 0, echo: true });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const c = r.json["choices"][0];
      assert.ok(c.text.startsWith(prompt), "a text prompt comes back as sent");
      // BOS adds nothing; every other token adds its own text (spaces included).
      assert.deepEqual(spansOf(c.text, c.logprobs.text_offset), ["", ...c.logprobs.tokens.slice(1)], prompt);
    }
  } finally {
    await server.close();
  }
});

test("echo: the prompt comes back scored, as lm-eval's log-likelihood requests read it, plain, streamed, and alone (max_tokens 0)", async () => {
  // Chunks of 3 prompt tokens: the scores cross chunk boundaries; the prefix cache is on (the default).
  const server = await serve(lm, { port: 0, name: "tiny", prefillChunk: 3 });
  try {
    const context = lm.tokenizer.encode("Once upon a time there was a girl named Lily. She loved to play in the park with her", { addSpecialTokens: true });
    const continuation = lm.tokenizer.encode(" little dog", { addSpecialTokens: false });
    const p = [...context, ...continuation];
    // lm-eval's local-completions payload for a log-likelihood request (tokenized, batch size 1).
    const ask = { model: "tiny", prompt: [p], temperature: 0, max_tokens: 1, logprobs: 1, seed: 1234, echo: true };
    const r = await post(server.url, ask);
    assert.equal(r.status, 200);
    const c = r.json["choices"][0];
    const lp = c.logprobs;
    assert.equal(lp.tokens.length, p.length + 1, "the prompt's tokens, then the one generated");
    assert.equal(lp.token_logprobs[0], null);
    assert.equal(lp.top_logprobs[0], null);
    assert.equal(lp.tokens[0], lm.tokenizer.decode([bos!], { skipSpecialTokens: false }));
    const losses = lm.model.tokenLosses(Int32Array.from(p.slice(0, -1)), Int32Array.from(p.slice(1)));
    for (let k = 1; k < p.length; k++) assert.ok(Math.abs(lp.token_logprobs[k] + losses[k - 1]!) < 1e-4, `prompt token ${k}`);
    // What lm-eval computes from it: the continuation's log-likelihood, and whether greedy decoding gives it.
    const ll = lp.token_logprobs.slice(context.length, -1).reduce((a: number, x: number) => a + x, 0);
    const want = -losses.slice(context.length - 1).reduce((a, x) => a + x, 0);
    assert.ok(Math.abs(ll - want) < 1e-3, `log-likelihood ${ll} against ${want}`);
    const greedy = lp.token_logprobs.slice(context.length, -1).every((x: number, k: number) => x === Math.max(...(Object.values(lp.top_logprobs[context.length + k]) as number[])));
    const logits = lm.model.forward(Int32Array.from(p)).toArray();
    const V = lm.config.vocabSize;
    const argmaxAt = (row: number) => Array.from(logits.subarray(row * V, (row + 1) * V)).reduce((b, x, i, a) => (x > a[b]! ? i : b), 0);
    assert.equal(greedy, continuation.every((t, k) => argmaxAt(context.length - 1 + k) === t));
    // Offsets run on from the prompt's into the completion's, each where its token's text begins in the
    // text: BOS adds none of it, and the first word's leading space is not there.
    const spans = spansOf(c.text, lp.text_offset);
    assert.deepEqual(spans, ["", lp.tokens[1].trimStart(), ...lp.tokens.slice(2)]);
    const promptText = lm.tokenizer.decode(p, { skipSpecialTokens: true });
    assert.ok(c.text.startsWith(promptText) && c.text.length > promptText.length, "the text is the prompt's, then the completion's");
    // Again: the prompt and its scores are kept in the prefix cache now, and it is scored the same from them.
    const hits = server.stats().prefixCache!.hits;
    const again = await post(server.url, ask);
    assert.deepEqual(again.json["choices"][0].logprobs, lp);
    assert.equal(server.stats().prefixCache!.hits, hits + 1);
    // The prompt alone: scored, nothing generated.
    const alone = await post(server.url, { ...ask, max_tokens: 0 });
    assert.equal(alone.status, 200);
    assert.deepEqual(alone.json["choices"][0].logprobs.token_logprobs, lp.token_logprobs.slice(0, -1));
    assert.equal(alone.json["choices"][0].text, promptText);
    assert.equal(alone.json["choices"][0].finish_reason, "length");
    assert.deepEqual(alone.json["usage"], { prompt_tokens: p.length, completion_tokens: 0, total_tokens: p.length });
    // Streamed: the prompt and its scores first, then the completion's; the same as the plain answer.
    const streamAsk = { ...ask, max_tokens: 4, n: 2, temperature: 0 };
    const plain = await post(server.url, streamAsk);
    const evs = await events(server.url, streamAsk);
    for (const i of [0, 1]) {
      const mine = evs.map((e) => e["choices"][0]).filter((x) => x?.index === i);
      assert.equal(mine[0].text, promptText, `choice ${i}: the prompt is the first piece`);
      assert.equal(mine.map((x) => x.text).join(""), plain.json["choices"][i].text);
      assert.deepEqual(mine.flatMap((x) => x.logprobs?.token_logprobs ?? []), plain.json["choices"][i].logprobs.token_logprobs);
      assert.equal(plain.json["choices"][i].logprobs.tokens.length, p.length + 4);
    }
    // Without logprobs: a text prompt comes back as sent.
    const text = await post(server.url, { prompt: "Once upon a time", max_tokens: 5, temperature: 0, echo: true });
    assert.equal(text.json["choices"][0].text, "Once upon a time" + expected("Once upon a time", 5));
    assert.equal(text.json["choices"][0].logprobs, null);
    const textEvs = await events(server.url, { prompt: "Once upon a time", max_tokens: 0, echo: true });
    assert.deepEqual(textEvs.map((e) => e["choices"][0].text).join(""), "Once upon a time");
    assert.equal(textEvs[textEvs.length - 1]!["choices"][0].finish_reason, "length");
  } finally {
    await server.close();
  }
});

test("vLLM's tokenizer endpoints: /tokenize, /detokenize and /tokenizer_info answer as lm-eval's remote tokenizer reads them", async () => {
  const server = await serve(lm, { port: 0, name: "tiny", apiKey: "k" });
  const call = async (route: string, body?: unknown) => {
    const r = await fetch(`${server.url}${route}`, { method: body === undefined ? "GET" : "POST", headers: { Authorization: "Bearer k" }, ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }) });
    return { status: r.status, json: (await r.json()) as Record<string, any> };
  };
  try {
    const info = await call("/tokenizer_info");
    assert.equal(info.status, 200);
    assert.equal(info.json["eos_token"], lm.tokenizer.decode([lm.config.eosTokenId!], { skipSpecialTokens: false }));
    assert.equal(info.json["bos_token"], lm.tokenizer.decode([bos!], { skipSpecialTokens: false }));
    assert.equal(info.json["chat_template"], null, "stories260K has none");
    assert.equal(info.json["model_max_length"], 512);
    // lm-eval's RemoteTokenizer: encode without special tokens, the EOS id as encode(eos_token)[0].
    const t = await call("/tokenize", { prompt: "Once upon a time", add_special_tokens: false });
    assert.deepEqual(t.json, { count: t.json["tokens"].length, max_model_len: 512, tokens: lm.tokenizer.encode("Once upon a time", { addSpecialTokens: false }), token_strs: null });
    assert.deepEqual((await call("/tokenize", { prompt: "Once upon a time" })).json["tokens"], lm.tokenizer.encode("Once upon a time", { addSpecialTokens: true }), "special tokens by default, as vLLM's");
    assert.deepEqual((await call("/tokenize", { prompt: info.json["eos_token"], add_special_tokens: false })).json["tokens"], [lm.config.eosTokenId]);
    const strs = await call("/tokenize", { model: "tiny", prompt: "The dog", return_token_strs: true });
    assert.equal(strs.json["token_strs"].length, strs.json["count"]);
    assert.deepEqual(strs.json["token_strs"].slice(0, 2), ["<s>", "▁The"], "the vocabulary's strings, as vLLM gives them");
    const d = await call("/detokenize", { tokens: t.json["tokens"] });
    assert.deepEqual(d.json, { prompt: "Once upon a time" });
    assert.deepEqual((await call("/detokenize", { tokens: [] })).json, { prompt: "" }, "no tokens: no text, as vLLM answers");
    // A long document (lm-eval sends whole ones) is tokenized in pieces, other requests served meanwhile: the same ids.
    const doc = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8").repeat(3);
    for (const special of [true, false]) {
      const long = await call("/tokenize", { prompt: doc, add_special_tokens: special });
      assert.deepEqual(long.json["tokens"], lm.tokenizer.encode(doc, { addSpecialTokens: special }), `add_special_tokens ${special}`);
    }
    // One long line (no break to cut at) is tokenized in a worker thread (test/io/encodeLong.test.ts): the same ids.
    const line = "hello world, once upon a time ".repeat(3000);
    assert.deepEqual((await call("/tokenize", { prompt: line })).json["tokens"], lm.tokenizer.encode(line, { addSpecialTokens: true }));
    // More than 65,536 ids are decoded in a worker thread (test/io/decodeOffThread.test.ts): the same text.
    const many = lm.tokenizer.encode(doc.repeat(2), { addSpecialTokens: true });
    assert.ok(many.length > 65_536, `${many.length} ids`);
    assert.equal((await call("/detokenize", { tokens: many })).json["prompt"], lm.tokenizer.decode(many, { skipSpecialTokens: false }));
    for (const [route, body, status, message] of [
      ["/tokenize", { messages: [{ role: "user", content: "hi" }] }, 404, /no chat template/],
      ["/tokenize", {}, 400, /neither prompt nor messages/],
      ["/tokenize", { prompt: "a", messages: [] }, 400, /both prompt and messages/],
      ["/tokenize", { prompt: [1, 2] }, 400, /prompt \[1,2\] is not text/],
      ["/tokenize", `{"prompt": ${DEEP}}`, 400, /prompt a list nested too deeply to show is not text/],
      ["/tokenize", { prompt: "a", add_special_tokens: "no" }, 400, /add_special_tokens "no" is not true or false/],
      ["/tokenize", { prompt: "a", add_generation_prompt: true }, 400, /add_generation_prompt is set without messages/],
      ["/tokenize", { prompt: "a", model: "other" }, 404, /model "other" is not served here/],
      ["/detokenize", { tokens: [1, 9999] }, 400, /token id 9999 is outside the vocabulary of 512/],
      ["/detokenize", { tokens: "1 2" }, 400, /tokens is not a list of token ids/],
      ["/detokenize", { tokens: [1], extra: 1 }, 400, /unknown field "extra"/],
    ] as const) {
      const r = await call(route, body);
      assert.equal(r.status, status, `${route} ${JSON.stringify(body)}`);
      assert.match(r.json["error"].message, message);
    }
    assert.equal((await fetch(`${server.url}/tokenize`, { method: "POST", body: "{}" })).status, 401, "the API key guards them too");
  } finally {
    await server.close();
  }
});

test("penalties and logit_bias: a completion with them equals generate() with them; logprobs stay the model's own; bad values are refused by name", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    const prompt = "Once upon a time";
    const p = lm.tokenizer.encode(prompt, { addSpecialTokens: true });
    const dog = lm.tokenizer.encode(" dog", { addSpecialTokens: false })[0]!;
    const ask = { prompt, max_tokens: 12, temperature: 0, ignore_eos: true, repetition_penalty: 1.5, frequency_penalty: 0.5, presence_penalty: 0.3, logit_bias: { [String(dog)]: 4 } };
    const r = await post(server.url, ask);
    assert.equal(r.status, 200);
    const want = generate(lm.model, p, { maxTokens: 12, stopAtEos: false, repetitionPenalty: 1.5, frequencyPenalty: 0.5, presencePenalty: 0.3, logitBias: new Map([[dog, 4]]) }).ids;
    assert.equal(r.json["choices"][0].text, continuation(p, want));
    // A bias of 100 forces the token; the logprob reported is still the model's own for it.
    const forced = await post(server.url, { prompt, max_tokens: 3, temperature: 0, logit_bias: { [String(dog)]: 100 }, logprobs: 1 });
    const lp = forced.json["choices"][0].logprobs;
    assert.equal(forced.json["choices"][0].text, continuation(p, [dog, dog, dog]), "the biased token three times");
    assert.equal(lp.tokens.join(""), forced.json["choices"][0].text);
    assert.ok(lp.token_logprobs[0] < Math.max(...(Object.values(lp.top_logprobs[0]) as number[])), "not the model's most likely token: its own log-probability, not the biased one");
    await assertRefused(server.url, [
      [{ prompt, presence_penalty: 2.5 }, /presence_penalty 2.5 is not a number from -2 to 2/],
      [{ prompt, repetition_penalty: "high" }, /repetition_penalty "high" is not a number/],
      [{ prompt, logit_bias: { abc: 1 } }, /logit_bias key "abc" is not a token id/],
      [{ prompt, logit_bias: { "99999": 1 } }, /logit_bias names token id 99999, outside the vocabulary of 512/],
      [{ prompt, logit_bias: { "5": -200 } }, /logit_bias gives token 5 the bias -200/],
      [{ prompt, logit_bias: [1] }, /logit_bias is not an object/],
    ]);
  } finally {
    await server.close();
  }
});

test("vLLM's min_p, stop_token_ids and min_tokens: min_p 1 samples the greedy text; a stop token id ends a choice as EOS does; min_tokens holds it back", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    const prompt = "Once upon a time";
    const p = lm.tokenizer.encode(prompt, { addSpecialTokens: true });
    const greedy = generate(lm.model, p, { maxTokens: 8, stopAtEos: false }).ids;
    const text = (ids: number[]) => continuation(p, ids);
    const sampled = await post(server.url, { prompt, max_tokens: 8, temperature: 1.5, seed: 3, min_p: 1, ignore_eos: true });
    assert.equal(sampled.json["choices"][0].text, text(greedy), "only the most likely token clears min_p 1");
    const stopped = await post(server.url, { prompt, max_tokens: 8, temperature: 0, stop_token_ids: [greedy[2]], ignore_eos: true });
    assert.equal(stopped.json["choices"][0].finish_reason, "stop");
    assert.equal(stopped.json["choices"][0].text, text(greedy.slice(0, 2)), "the stop token is not in the text, as EOS is not");
    assert.equal(stopped.json["usage"].completion_tokens, 3);
    const held = await post(server.url, { prompt, max_tokens: 4, temperature: 0, stop_token_ids: [greedy[2]], min_tokens: 4, ignore_eos: true, logprobs: 0 });
    assert.equal(held.json["choices"][0].finish_reason, "length", "the stop token cannot come before 4 tokens");
    assert.equal(held.json["usage"].completion_tokens, 4);
    assert.equal(held.json["choices"][0].text.startsWith(text(greedy.slice(0, 2))), true);
    await assertRefused(server.url, [
      [{ prompt, min_p: 2 }, /min_p 2 is not a fraction in \[0, 1\]/],
      [{ prompt, stop_token_ids: [600] }, /stop_token_ids \[600\] is not a list of token ids of this model/],
      [{ prompt, max_tokens: 3, min_tokens: 5 }, /min_tokens 5 is more than max_tokens 3/],
      // Without max_tokens, the default limit (16) is named as such.
      [{ prompt, min_tokens: 20 }, /min_tokens 20 is more than the 16 tokens a completion gets when max_tokens is not sent; hint: send max_tokens ≥ 20 with it, or min_tokens ≤ 16/],
    ]);
  } finally {
    await server.close();
  }
});

test("vLLM's include_stop_str_in_output keeps the stop string, plain and streamed; skip_special_tokens false writes special tokens into the text", async () => {
  const server = await serve(lm, { port: 0, name: "tiny" });
  try {
    const ask = { prompt: "Once upon a time", max_tokens: 40, temperature: 0, stop: ["."] };
    const cut = await post(server.url, ask);
    const kept = await post(server.url, { ...ask, include_stop_str_in_output: true });
    assert.equal(kept.json["choices"][0].text, cut.json["choices"][0].text + ".");
    assert.equal(kept.json["choices"][0].finish_reason, "stop");
    const evs = await events(server.url, { ...ask, include_stop_str_in_output: true });
    assert.equal(evs.map((e) => e["choices"][0]?.text ?? "").join(""), kept.json["choices"][0].text);
    // EOS forced twice, generated past (ignore_eos): no text unless special tokens are written.
    const eos = lm.config.eosTokenId!;
    const forced = { prompt: "Once", max_tokens: 2, temperature: 0, ignore_eos: true, logit_bias: { [String(eos)]: 100 } };
    assert.equal((await post(server.url, forced)).json["choices"][0].text, "");
    assert.equal((await post(server.url, { ...forced, skip_special_tokens: false })).json["choices"][0].text, lm.tokenizer.decode([eos, eos], { skipSpecialTokens: false }));
    await assertRefused(server.url, [
      [{ prompt: "x", include_stop_str_in_output: 1 }, /include_stop_str_in_output 1 is not true or false/],
      [{ prompt: "x", skip_special_tokens: "no" }, /skip_special_tokens "no" is not true or false/],
    ]);
  } finally {
    await server.close();
  }
});

test("a prompt text far longer than the model is refused without tokenizing it all", async () => {
  const server = await serve(lm, { port: 0 });
  // What the tokenizer was given, not a wall-clock bound (a loaded CI machine would make that flaky).
  const encode = lm.tokenizer.encode;
  let longest = 0;
  lm.tokenizer.encode = function (text, o) {
    longest = Math.max(longest, text.length);
    return encode.call(this, text, o);
  };
  try {
    const prompt = "Once upon a time there was a dog. ".repeat(60_000);
    const r = await post(server.url, { prompt });
    assert.equal(r.status, 400);
    assert.match(r.json["error"].message, /more than the model's maximum context length of 512 tokens/);
    assert.ok(longest < prompt.length / 100, `the tokenizer saw ${longest} of its ${prompt.length} characters`);
  } finally {
    lm.tokenizer.encode = encode;
    await server.close();
  }
});

test("an aborted signal ends queued and running requests with 503 (an error event on a stream); an upload under way at close() is answered", async () => {
  const abort = new AbortController();
  const server = await serve(lm, { port: 0, maxBatch: 1, signal: abort.signal });
  const running = post(server.url, { prompt: "Once", max_tokens: 400, temperature: 0 });
  await waitFor(() => server.stats().running > 0, "the first sequence to run", 60_000, 2);
  const queued = post(server.url, { prompt: "The dog", max_tokens: 5, temperature: 0 });
  const streamed = fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "Lily", max_tokens: 5, stream: true }) }).then((r) => r.text());
  await waitFor(() => server.stats().waiting >= 2, "two requests to queue", 60_000, 2);
  abort.abort();
  for (const r of await Promise.all([running, queued])) {
    assert.equal(r.status, 503);
    assert.match(r.json["error"].message, /shut down/);
  }
  assert.match(await streamed, /"code":"INTERRUPTED"/);

  const second = await serve(lm, { port: 0 });
  const http = await import("node:http");
  // Headers and half the body sent, then close(), then the rest.
  const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 4, temperature: 0 });
  const answer = new Promise<number>((resolve, reject) => {
    const req = http.request(`${second.url}/v1/completions`, { method: "POST", headers: { "Content-Length": Buffer.byteLength(body) } }, (res) => (res.resume(), res.on("end", () => resolve(res.statusCode!))));
    req.on("error", reject);
    req.write(body.slice(0, 10));
    setTimeout(() => req.end(body.slice(10)), 200);
  });
  try {
    // Received, not only connected: close() ends idle connections, and one whose request the server
    // has not read yet would count as idle.
    await waitFor(() => second.stats().inFlight === 1, "the upload to be under way");
    await Promise.all([second.close(), answer.then((s) => assert.equal(s, 200))]);
  } finally {
    await second.close();
  }
});

test("with an API key, /v1 routes need it as a bearer token (401 otherwise); /health stays open", async () => {
  const server = await serve(lm, { port: 0, apiKey: "s3cret" });
  try {
    const body = JSON.stringify({ prompt: "Once", max_tokens: 2, temperature: 0 });
    const none = await fetch(`${server.url}/v1/completions`, { method: "POST", body });
    assert.equal(none.status, 401);
    const refused = ((await none.json()) as { error: { message: string; code: string } }).error;
    assert.match(refused.message, /no valid API key.*Authorization: Bearer/);
    assert.equal(refused.code, "invalid_api_key", "OpenAI's code");
    assert.equal((await fetch(`${server.url}/v1/models`, { headers: { Authorization: "Bearer wrong!" } })).status, 401);
    assert.equal((await fetch(`${server.url}/v1/completions`, { method: "POST", body, headers: { Authorization: "Bearer s3cret" } })).status, 200);
    // The scheme's case is free (RFC 9110); the key's is not.
    assert.equal((await fetch(`${server.url}/v1/completions`, { method: "POST", body, headers: { Authorization: "bearer s3cret" } })).status, 200);
    assert.equal((await fetch(`${server.url}/v1/models`, { headers: { Authorization: "Bearer S3CRET" } })).status, 401);
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
  } finally {
    await server.close();
  }
  await assert.rejects(serve(lm, { port: 0, apiKey: "" }), /--api-key is empty/);
});

test("an int8 cache: /stats and /metrics give its bytes per token in int8 and as held (float32 rows on the CPU), and the start line names both", async () => {
  const lines: string[] = [];
  const server = await serve(lm, { port: 0, kvCache: "int8", logger: { info: (m) => lines.push(m), warn: (m) => lines.push(m) } });
  try {
    const held = 4 * kvElemsPerToken(lm.config), nominal = kvBytesPerToken(lm.config, "int8");
    const stats = (await (await fetch(`${server.url}/stats`)).json()) as Record<string, unknown>;
    assert.deepEqual([stats["kvBytesPerToken"], stats["kvHeldBytesPerToken"]], [nominal, held]);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(text, new RegExp(`^mha2mla_kv_cache_bytes_per_token ${nominal}$`, "m"));
    assert.match(text, new RegExp(`^mha2mla_kv_cache_held_bytes_per_token ${held}$`, "m"));
    // The bytes of the tokens cached so far (none while idle), under the name that says so and under its old one.
    assert.deepEqual([stats["kvCachedBytes"], stats["kvHeldBytes"]], [0, 0]);
    assert.match(text, /^# HELP mha2mla_kv_cache_cached_bytes Bytes of the tokens the running sequences have cached so far, in the cache's dtype.*\n# TYPE mha2mla_kv_cache_cached_bytes gauge\nmha2mla_kv_cache_cached_bytes 0$/m);
    assert.match(text, /^# HELP mha2mla_kv_cache_held_bytes Deprecated: the old name of mha2mla_kv_cache_cached_bytes.*\n# TYPE mha2mla_kv_cache_held_bytes gauge\nmha2mla_kv_cache_held_bytes 0$/m);
    assert.ok(lines.some((l) => l.includes(`int8 cache, ${nominal} bytes per token (${held} held in memory, as the KV budget counts them: the ${lm.model.backend.name} backend holds int8 cache rows on the host, as float32)`)), lines.join("\n"));
  } finally {
    await server.close();
  }
});

test("GET /metrics gives the counters in Prometheus's text format", async () => {
  const server = await serve(lm, { port: 0, kvBudgetMb: 8 });
  try {
    await post(server.url, { prompt: "Once upon a time", max_tokens: 5, temperature: 0 });
    const r = await fetch(`${server.url}/metrics`);
    assert.match(r.headers.get("content-type") ?? "", /text\/plain/);
    const text = await r.text();
    assert.match(text, /^# TYPE mha2mla_requests_total counter\nmha2mla_requests_total 1$/m);
    assert.match(text, /^mha2mla_sequences_ended_total\{reason="length"\} 1$/m);
    assert.match(text, /^mha2mla_generated_tokens_total 5$/m);
    assert.match(text, /^mha2mla_kv_cache_budget_bytes 8388608$/m);
    assert.match(text, /^mha2mla_prefix_cache_hits_total 0$/m);
    // Latency histograms: the one sequence in +Inf and the count, cumulative buckets.
    assert.match(text, /^# TYPE mha2mla_time_to_first_token_seconds histogram$/m);
    for (const h of ["time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"]) {
      assert.match(text, new RegExp(`^mha2mla_${h}_bucket\\{le="\\+Inf"\\} 1$`, "m"), h);
      assert.match(text, new RegExp(`^mha2mla_${h}_count 1$`, "m"), h);
      const counts = [...text.matchAll(new RegExp(`^mha2mla_${h}_bucket\\{le="[^"]+"\\} (\\d+)$`, "gm"))].map((m) => Number(m[1]));
      assert.ok(counts.every((c, i) => i === 0 || c >= counts[i - 1]!), `${h}: cumulative`);
    }
    assert.equal(server.stats().latency.endToEnd.count, 1);
    // Every sample line is NAME{labels} VALUE, each name declared by a TYPE line (a histogram's samples by its _bucket, _sum and _count).
    const types = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]));
    for (const line of text.split("\n").filter((l) => l && !l.startsWith("#"))) {
      assert.match(line, /^[a-z0-9_]+(\{[^}]*\})? -?[\d.e+-]+$/, line);
      const name = line.split(/[{ ]/)[0]!;
      assert.ok(types.has(name) || types.has(name.replace(/_(bucket|sum|count)$/, "")), line);
    }
  } finally {
    await server.close();
  }
});

test("n choices: each draws as its own request with seed + index, the prompt is prefilled once, usage sums them; streamed choices carry their index", async () => {
  const server = await serve(lm, { port: 0 });
  try {
    const prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside.";
    assert.ok(lm.tokenizer.encode(prompt, { addSpecialTokens: true }).length >= 16, "long enough to be kept");
    const ask = { prompt, max_tokens: 12, temperature: 1, seed: 40 };
    const three = await post(server.url, { ...ask, n: 3 });
    assert.equal(three.status, 200);
    assert.deepEqual(three.json["choices"].map((c: { index: number }) => c.index), [0, 1, 2]);
    assert.equal(server.stats().prefixCache!.hits, 2, "the other two choices started from the first's kept prompt");
    let tokens = 0;
    for (let i = 0; i < 3; i++) {
      const alone = await post(server.url, { ...ask, seed: 40 + i });
      assert.equal(three.json["choices"][i].text, alone.json["choices"][0].text, `choice ${i} draws as a request with seed ${40 + i}`);
      tokens += alone.json["usage"].completion_tokens as number;
    }
    assert.equal(three.json["usage"].completion_tokens, tokens, "the choices' tokens summed");
    assert.equal(three.json["usage"].total_tokens, three.json["usage"].prompt_tokens + tokens);
    const evs = await events(server.url, { ...ask, n: 2, stream_options: { include_usage: true } });
    const byIndex = [0, 1].map((i) => evs.filter((e) => e["choices"][0]?.index === i));
    for (const [i, list] of byIndex.entries()) {
      assert.equal(list.filter((e) => e["choices"][0].finish_reason !== null).length, 1, `choice ${i} finishes once`);
      assert.equal(list.map((e) => e["choices"][0].text).join(""), (await post(server.url, { ...ask, seed: 40 + i })).json["choices"][0].text);
    }
    assert.ok(evs[evs.length - 1]!["usage"].completion_tokens > 0, "one usage event for the request, last");
  } finally {
    await server.close();
  }
});

test("a batch of prompts in one request: each prompt's choices answer as the prompt sent alone, indexed prompt by prompt; usage counts each prompt once; echo scores each", async () => {
  const server = await serve(lm, { port: 0 });
  try {
    const asks = ["Once upon a time", "The dog ran", "Lily saw a bird"];
    const ask = { max_tokens: 8, temperature: 1, seed: 7 };
    const batch = await post(server.url, { ...ask, prompt: asks, n: 2 });
    assert.equal(batch.status, 200);
    assert.deepEqual(batch.json["choices"].map((c: { index: number }) => c.index), [0, 1, 2, 3, 4, 5]);
    let promptTokens = 0, completion = 0;
    for (const [p, text] of asks.entries()) {
      const alone = await post(server.url, { ...ask, prompt: text, n: 2 });
      for (const j of [0, 1]) assert.equal(batch.json["choices"][p * 2 + j].text, alone.json["choices"][j].text, `prompt ${p}, choice ${j}`);
      promptTokens += alone.json["usage"].prompt_tokens as number;
      completion += alone.json["usage"].completion_tokens as number;
    }
    assert.deepEqual(batch.json["usage"], { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion });
    // lm-eval with a batch size: several log-likelihood requests as token-id prompts in one body.
    const ids = asks.map((t) => lm.tokenizer.encode(t, { addSpecialTokens: true }));
    const scored = await post(server.url, { prompt: ids, max_tokens: 1, temperature: 0, logprobs: 1, echo: true });
    for (const [p, one] of ids.entries()) {
      const alone = await post(server.url, { prompt: one, max_tokens: 1, temperature: 0, logprobs: 1, echo: true });
      assert.deepEqual(scored.json["choices"][p].logprobs, alone.json["choices"][0].logprobs, `prompt ${p} scored as alone`);
    }
    const evs = await events(server.url, { prompt: ids, max_tokens: 3, temperature: 0, echo: true });
    for (const [p, one] of ids.entries()) assert.equal(evs.filter((e) => e["choices"][0]?.index === p).map((e) => e["choices"][0].text).join(""), scored.json["choices"][p].text.slice(0, lm.tokenizer.decode(one, { skipSpecialTokens: true }).length) + (await post(server.url, { prompt: one, max_tokens: 3, temperature: 0 })).json["choices"][0].text);
  } finally {
    await server.close();
  }
});

test("a batch whose prompt[1] is refused runs none of its choices and counts none as cancelled in /stats", async () => {
  const server = await serve(lm, { port: 0 });
  try {
    const long = Array.from({ length: 500 }, () => 3);
    const r = await post(server.url, { prompt: [[1, 3, 4], [1, ...long]], n: 2, max_tokens: 100 });
    assert.equal(r.status, 400);
    assert.match(r.json["error"].message, /^prompt\[1\]: the prompt's 501 tokens \+ max_tokens 100 = 601 pass the model's 512 positions/);
    const stats = (await (await fetch(`${server.url}/stats`)).json()) as Record<string, any>;
    assert.deepEqual(stats["ended"], { stop: 0, length: 0, cancelled: 0, error: 0 });
    assert.equal(stats["requests"], 0);
  } finally {
    await server.close();
  }
});

test("a choice that fails mid-stream fails the request with an error event and [DONE]; its sibling writes nothing after, and the server goes on", async () => {
  let calls = 0;
  // A tokenizer that fails once, part-way through the stream (as decoding an id past a padded vocabulary does).
  const failing = { ...lm, tokenizer: { ...lm.tokenizer, decode: (ids: readonly number[], o?: { skipSpecialTokens?: boolean }) => { if (++calls === 25) throw new Error("boom"); return lm.tokenizer.decode(ids, o); } } };
  const server = await serve(failing, { port: 0 });
  try {
    const r = await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "Once upon a time", n: 2, max_tokens: 30, temperature: 1, seed: 3, stream: true }) });
    const text = await r.text();
    assert.match(text, /"error":\{"message":"internal error: boom/);
    assert.ok(text.endsWith("data: [DONE]\n\n"), "the stream ends with [DONE]");
    assert.equal((await fetch(`${server.url}/health`)).status, 200, "the server goes on");
  } finally {
    await server.close();
  }
});

test("a tokenizer that cleans up spaces: streamed and plain answers of the same greedy request have the same text, cleaned as the whole text is, and offsets into it", async () => {
  // stories260K whose tokenizer_config.json asks for the clean-up (as Llama 3's does), with a chat template.
  const dir = path.join(tmpDir(), "stories-cleaning");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const cfgFile = path.join(dir, "tokenizer_config.json");
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, "utf8")), clean_up_tokenization_spaces: true, chat_template: "{% for m in messages %}{{ m.content }}{% endfor %}" }));
  const cleaning = loadModel(dir);
  const server = await serve(cleaning, { port: 0, name: "tiny" });
  try {
    // The greedy text drawn to the pieces the clean-up reads, and cycled through them (a frequency penalty),
    // so its matches cross token boundaries: " " then ".", " n" then "'" then "t".
    const pieces = [...new Set(cleaning.tokenizer.encode("x . , ! ' n't 's", { addSpecialTokens: false }))];
    const ask = { prompt: "Once upon a time", max_tokens: 40, temperature: 0, logit_bias: Object.fromEntries(pieces.map((t) => [String(t), 30])), frequency_penalty: 2 };
    for (const extra of [{ logprobs: 2 }, { stop: ["'s", "!"] }]) {
      const plain = (await post(server.url, { ...ask, ...extra })).json["choices"][0];
      const evs = await events(server.url, { ...ask, ...extra });
      assert.equal(evs.map((e) => e["choices"][0]?.text ?? "").join(""), plain.text, JSON.stringify(extra));
      if (!("logprobs" in extra)) continue;
      const lp = plain.logprobs;
      const raw = lp.tokens.join("");
      assert.notEqual(plain.text, raw, "the clean-up changed the text");
      assert.equal(plain.text, cleanUpSpaces(raw), "the completion's text is cleaned up as one text");
      // Each token's offset is where its text begins in the text returned: the text from one offset to the
      // next is the token's text less the spaces the clean-up dropped.
      lp.tokens.forEach((token: string, k: number) => {
        const piece = plain.text.slice(lp.text_offset[k], lp.text_offset[k + 1] ?? plain.text.length);
        // The token's characters in order, each either the piece's next one or a dropped space.
        let i = 0;
        for (const ch of token) {
          if (piece[i] === ch) i++;
          else assert.equal(ch, " ", `token ${k} ${JSON.stringify(token)}: ${JSON.stringify(piece)}`);
        }
        assert.equal(i, piece.length, `token ${k} ${JSON.stringify(token)}: ${JSON.stringify(piece)}`);
      });
      assert.deepEqual(evs.flatMap((e) => e["choices"][0]?.logprobs?.text_offset ?? []), lp.text_offset, "streamed offsets are the plain answer's");
      assert.deepEqual(evs.flatMap((e) => e["choices"][0]?.logprobs?.tokens ?? []), lp.tokens);
    }
    // Chat, plain and streamed.
    const chatAsk = { messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 40, temperature: 0, logit_bias: ask.logit_bias, frequency_penalty: 2 };
    const chat = async (stream: boolean) => (await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ ...chatAsk, stream }) })).text();
    const whole = (JSON.parse(await chat(false)) as Record<string, any>)["choices"][0].message.content as string;
    const chunks = (await chat(true)).split("\n\n").filter((x) => x.startsWith("data: {")).map((x) => JSON.parse(x.slice(6)) as Record<string, any>);
    assert.equal(chunks.map((c) => c["choices"][0]?.delta?.content ?? "").join(""), whole);
    assert.ok(whole.length > 10 && whole === cleanUpSpaces(whole));
  } finally {
    await server.close();
  }
});
