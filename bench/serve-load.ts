/**
 * Load on `mha2mla serve`: C clients each send streamed completions back to back (prompts of P tokens
 * cut from a text, exactly N new tokens each (ignore_eos), greedy), against one server per model, started as the command
 * a user runs. Reports output tokens/s, time to first token and request latency, and how many
 * sequences the server ran together (its /stats, polled). Give an MHA model and its MLA conversion with
 * one --kv-budget-mb: the budget admits as many more MLA sequences as its cache is smaller.
 *
 * `--shared-prefix N`: every prompt begins with the same N tokens (a system prompt), which the server's
 * prefix cache (`--prefix-cache-mb`, passed on) prefills once.
 *
 * `--turns K`: each of the requests is a conversation of K turns, one request each; turn k + 1's prompt
 * is turn k's, its reply (the text, tokenized again, as a chat template renders it) and `--turn-tokens`
 * more of the text. The server's prefix cache keeps each finished turn, so a later turn prefills only
 * what is new. "Reused" is the share of the prompt tokens sent that the server did not prefill.
 *
 * Usage: node dist/bench/serve-load.js MODEL [MODEL…] [--clients 16] [--requests 64] [--prompt-tokens 256]
 *        [--max-tokens 64] [--max-batch 32] [--kv-budget-mb MB] [--kv-cache auto] [--device auto] [--text FILE]
 *        [--shared-prefix 0] [--prefix-cache-mb MB] [--turns 1] [--turn-tokens 64]
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadTokenizer } from "../src/io/tokenizer.js";
import { resolveModel } from "../src/io/modelDir.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const argv = process.argv.slice(2);
const flag = (name: string, fallback: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1]! : fallback;
};
const models = argv.filter((a, i) => !a.startsWith("--") && !(i > 0 && argv[i - 1]!.startsWith("--")));
const clients = Number(flag("clients", "16"));
const requests = Number(flag("requests", "64"));
const promptTokens = Number(flag("prompt-tokens", "256"));
const maxTokens = Number(flag("max-tokens", "64"));
const maxBatch = flag("max-batch", "32");
const budget = flag("kv-budget-mb", "");
const kvCache = flag("kv-cache", "auto");
const device = flag("device", "auto");
const sharedPrefix = Number(flag("shared-prefix", "0"));
const prefixCacheMb = flag("prefix-cache-mb", "");
const turns = Number(flag("turns", "1"));
const turnTokens = Number(flag("turn-tokens", "64"));
const textFile = flag("text", path.resolve(ROOT, "..", "shared", "data", "text", "debian_dev_val.txt"));

async function start(model: string): Promise<{ url: string; child: ChildProcess; log: () => string }> {
  const args = [path.join(ROOT, "dist/src/cli/main.js"), "serve", model, "--port", "0", "--max-batch", maxBatch, "--kv-cache", kvCache, "--device", device, ...(budget ? ["--kv-budget-mb", budget] : []), ...(prefixCacheMb ? ["--prefix-cache-mb", prefixCacheMb] : [])];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  for (let i = 0; i < 6000; i++) {
    const m = /serving .* at (http:\/\/\S+)/.exec(err);
    if (m) return { url: m[1]!, child, log: () => err };
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`the server did not start:\n${err}`);
}

/** One streamed completion: seconds to its first text and to its end, the tokens it produced, its text. */
async function complete(url: string, prompt: number[]): Promise<{ ttft: number; total: number; tokens: number; text: string }> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }) });
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const reader = r.body!.getReader();
  let ttft = NaN, text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (Number.isNaN(ttft)) ttft = (performance.now() - t0) / 1000;
    text += Buffer.from(value).toString();
  }
  const usage = /"completion_tokens":(\d+)/.exec(text);
  let reply = "";
  for (const line of text.split("\n"))
    if (line.startsWith("data: {")) reply += (JSON.parse(line.slice(6)) as { choices: { text?: string }[] }).choices[0]?.text ?? "";
  return { ttft, total: (performance.now() - t0) / 1000, tokens: Number(usage?.[1] ?? 0), text: reply };
}

const pct = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

const text = fs.readFileSync(textFile, "utf8");
console.log(`${new Date().toISOString().slice(0, 10)}, ${clients} clients, ${requests} requests of ${promptTokens} prompt${sharedPrefix ? ` (${sharedPrefix} shared)` : ""} + ${maxTokens} new tokens (greedy, streamed)${turns > 1 ? `, ${turns} turns each (+ ${turnTokens} tokens a turn)` : ""}, --max-batch ${maxBatch}${budget ? ` --kv-budget-mb ${budget}` : ""}${prefixCacheMb ? ` --prefix-cache-mb ${prefixCacheMb}` : ""} --kv-cache ${kvCache} --device ${device}`);
console.log("| model | KV bytes/token | most running | output tok/s | TTFT p50 / p99 (s) | latency p50 / p99 (s) | wall (s) | decode steps (recorded) | prompt tokens reused |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const model of models) {
  const tok = loadTokenizer(resolveModel(model).dir);
  const ids = tok.encode(text.slice(0, 400_000), { addSpecialTokens: false });
  // Each prompt: BOS, the shared beginning (the text's first tokens), then its own window of the text.
  const own = promptTokens - 1 - sharedPrefix;
  const at = (i: number) => sharedPrefix + ((i * 997) % (ids.length - own - sharedPrefix));
  const prompts = Array.from({ length: requests + 1 }, (_, i) => [1, ...ids.slice(0, sharedPrefix), ...ids.slice(at(i), at(i) + own)]);
  const server = await start(model);
  let most = 0, perToken = 0;
  type Stats = { running: number; kvBytesPerToken: number; decodeSteps: number; replayedSteps: number; prefixCache: { reusedTokens: number } | null };
  const stats = () => fetch(`${server.url}/stats`).then((r) => r.json() as Promise<Stats>);
  const poll = setInterval(() => {
    void stats()
      .then((s) => ((most = Math.max(most, s.running)), (perToken = s.kvBytesPerToken)))
      .catch(() => {});
  }, 20);
  // One request first: the server's one-time costs (the first forward, kernel set-up) stay out of the timing.
  await complete(server.url, prompts[requests]!);
  let next = 0, promptTokensSent = 0;
  const results: { ttft: number; total: number; tokens: number }[] = [];
  // A conversation: each turn's prompt is the last one, its reply and the next piece of the text.
  const converse = async (i: number): Promise<void> => {
    let prompt = prompts[i]!;
    for (let turn = 0; turn < turns; turn++) {
      promptTokensSent += prompt.length;
      const r = await complete(server.url, prompt);
      results.push(r);
      const more = ids.slice(at(i + 7919 * (turn + 1)), at(i + 7919 * (turn + 1)) + turnTokens);
      prompt = [...prompt, ...tok.encode(r.text, { addSpecialTokens: false }), ...more];
    }
  };
  const before = await stats();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < requests) await converse(next++);
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  clearInterval(poll);
  const after = await stats();
  const steps = after.decodeSteps - before.decodeSteps, recorded = after.replayedSteps - before.replayedSteps;
  const reused = (after.prefixCache?.reusedTokens ?? 0) - (before.prefixCache?.reusedTokens ?? 0);
  server.child.kill("SIGINT");
  await new Promise((r) => server.child.on("exit", r));
  const tokens = results.reduce((n, r) => n + r.tokens, 0);
  const ttft = results.map((r) => r.ttft), lat = results.map((r) => r.total);
  console.log(`| ${path.basename(model)} | ${perToken} | ${most} | ${(tokens / wall).toFixed(1)} | ${pct(ttft, 0.5).toFixed(2)} / ${pct(ttft, 0.99).toFixed(2)} | ${pct(lat, 0.5).toFixed(2)} / ${pct(lat, 0.99).toFixed(2)} | ${wall.toFixed(1)} | ${steps} (${((100 * recorded) / Math.max(1, steps)).toFixed(0)}%) | ${((100 * reused) / Math.max(1, promptTokensSent)).toFixed(0)}% |`);
}
