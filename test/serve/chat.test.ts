/**
 * POST /v1/chat/completions over a model folder with a chat template (Llama 2's, as its
 * tokenizer_config.json carries it): the template rendered as transformers does, answers equal to
 * generate() on the rendered prompt, plain and streamed as chat.completion chunks, and refusals.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadModel } from "../../src/model/llama.js";
import { generate } from "../../src/model/generate.js";
import { serve } from "../../src/serve/server.js";
import { continueFinalMessage, loadChatTemplate } from "../../src/serve/chatTemplate.js";
import { inspectModel } from "../../src/eval/inspect.js";
import { kvBytesPerToken } from "../../src/model/config.js";
import { MlaError } from "../../src/errors.js";
import { MODELS, tmpDir } from "../helpers.js";

/** meta-llama/Llama-2-7b-chat-hf's chat_template. */
const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/** stories260K with Llama 2's chat template in its tokenizer_config.json. */
function chatModel(): string {
  const dir = path.join(tmpDir(), "stories-chat");
  fs.cpSync(path.join(MODELS, "stories260K"), dir, { recursive: true });
  const cfgFile = path.join(dir, "tokenizer_config.json");
  const cfg = JSON.parse(fs.readFileSync(cfgFile, "utf8")) as Record<string, unknown>;
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, bos_token: "<s>", eos_token: { content: "</s>" }, chat_template: LLAMA2 }));
  return dir;
}

const dir = chatModel();
const lm = loadModel(dir);
const messages = [
  { role: "system", content: "You tell short stories." },
  { role: "user", content: " Tell me about a cat. " },
];

test("the chat template renders as transformers renders it, and refuses what it refuses", () => {
  const t = loadChatTemplate(dir)!;
  assert.equal(t.render(messages), "<s>[INST] <<SYS>>\nYou tell short stories.\n<</SYS>>\n\n Tell me about a cat. [/INST]", "strip() trims the whole content, as in Python");
  assert.equal(t.render([{ role: "user", content: "a" }, { role: "assistant", content: "b" }, { role: "user", content: "c" }]), "<s>[INST] a [/INST] b </s><s>[INST] c [/INST]");
  assert.throws(() => t.render([{ role: "assistant", content: "a" }]), /chat template refuses these messages: .*Conversation roles must alternate/);
  // A template that fails on its own (an undefined name) is its fault, not the messages' (it was told to change them).
  const broken = path.join(tmpDir(), "broken");
  fs.cpSync(path.join(MODELS, "stories260K"), broken, { recursive: true });
  fs.writeFileSync(path.join(broken, "chat_template.jinja"), "{% for x in msgs %}{{ x }}{% endfor %}");
  assert.throws(() => loadChatTemplate(broken)!.render(messages), (e: unknown) => e instanceof MlaError && e.code === "BAD_TOKENIZER" && /chat_template\.jinja: the chat template fails while formatting the messages \(Expected iterable[\s\S]*hint: the template itself is at fault/.test(e.message));
  // Only the template's calls are routed: text it prints that names raise_exception is printed as written.
  fs.writeFileSync(path.join(broken, "chat_template.jinja"), "{{ 'a raise_exception(x) b' }} raise_exception( {% if messages[0]['role'] != 'system' %}{{ raise_exception('System first') }}{% endif %}ok");
  const routed = loadChatTemplate(broken)!;
  assert.equal(routed.render(messages), "a raise_exception(x) b raise_exception( ok");
  assert.throws(() => routed.render(messages.slice(1)), /chat template refuses these messages: System first/);
  assert.equal(loadChatTemplate(path.join(MODELS, "stories260K")), null);
  // A folder that is not there (or a file) is no model without a template: it is refused, naming it.
  const missing = path.join(tmpDir(), "no-such-dir");
  assert.throws(() => loadChatTemplate(missing), (e: unknown) => e instanceof MlaError && e.code === "NOT_FOUND" && e.message.startsWith(`model folder ${missing} does not exist\n  hint: `));
  const file = path.join(MODELS, "stories260K", "config.json");
  assert.throws(() => loadChatTemplate(file), (e: unknown) => e instanceof MlaError && e.code === "BAD_ARGUMENT" && e.message.startsWith(`${file} is a file, not a model folder`));
  assert.equal(inspectModel(dir).chat_template, "tokenizer_config.json", "inspect says where the template comes from");
  assert.equal(inspectModel(path.join(MODELS, "stories260K")).chat_template, null);
  // chat_template.jinja (newer transformers) wins over tokenizer_config.json's.
  fs.writeFileSync(path.join(dir, "chat_template.jinja"), "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}");
  try {
    assert.equal(loadChatTemplate(dir)!.render([{ role: "user", content: "hi" }]), "<user>hi<assistant>");
  } finally {
    fs.rmSync(path.join(dir, "chat_template.jinja"));
  }
});

test("/tokenize renders messages through the chat template; /tokenizer_info carries the template", async () => {
  const server = await serve(lm, { port: 0, name: "chat" });
  try {
    const post = async (body: unknown) => ((await (await fetch(`${server.url}/tokenize`, { method: "POST", body: JSON.stringify(body) })).json()) as Record<string, any>)["tokens"];
    const t = loadChatTemplate(dir)!;
    assert.deepEqual(await post({ messages }), lm.tokenizer.encode(t.render(messages), { addSpecialTokens: false }), "the template writes the special tokens");
    const two = [{ role: "user", content: "a" }, { role: "assistant", content: "b" }];
    assert.deepEqual(await post({ messages: two, add_generation_prompt: false }), lm.tokenizer.encode(t.render(two, false), { addSpecialTokens: false }));
    const info = (await (await fetch(`${server.url}/tokenizer_info`)).json()) as Record<string, unknown>;
    assert.equal(info["chat_template"], LLAMA2);
  } finally {
    await server.close();
  }
});

test("continue_final_message continues the assistant's begun reply, as apply_chat_template(continue_final_message=True) renders it", async () => {
  const t = loadChatTemplate(dir)!;
  const begun = [{ role: "user", content: "Tell me about a cat." }, { role: "assistant", content: "Once upon a time" }];
  assert.equal(continueFinalMessage(t, begun), "<s>[INST] Tell me about a cat. [/INST] Once upon a time", "cut after the last content: no end-of-turn");
  const server = await serve(lm, { port: 0, name: "chat" });
  try {
    const ask = async (body: Record<string, unknown>) => {
      const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify(body) });
      return { status: r.status, json: (await r.json()) as Record<string, any> };
    };
    const r = await ask({ messages: begun, continue_final_message: true, max_tokens: 8, temperature: 0 });
    assert.equal(r.status, 200);
    const prompt = lm.tokenizer.encode(continueFinalMessage(t, begun), { addSpecialTokens: false });
    const ids = generate(lm.model, prompt, { maxTokens: 8 }).ids.filter((x) => x !== lm.config.eosTokenId);
    assert.equal(r.json["choices"][0].message.content, lm.tokenizer.decode([...prompt, ...ids].slice(1)).slice(lm.tokenizer.decode(prompt.slice(1)).length));
    assert.match((await ask({ messages: begun, continue_final_message: true, add_generation_prompt: true })).json["error"].message, /continue_final_message and add_generation_prompt are both true/);
    assert.match((await ask({ messages: begun, continue_final_message: "yes" })).json["error"].message, /continue_final_message "yes" is not true or false/);
  } finally {
    await server.close();
  }
});

test("chat completions, plain and streamed, answer as generate() continues the rendered prompt", async () => {
  const server = await serve(lm, { port: 0, name: "chat" });
  try {
    const prompt = lm.tokenizer.encode(loadChatTemplate(dir)!.render(messages), { addSpecialTokens: false });
    assert.equal(prompt.filter((t) => t === lm.config.bosTokenId).length, 1, "one BOS, the template's");
    const ids = generate(lm.model, prompt, { maxTokens: 20 }).ids.filter((t) => t !== lm.config.eosTokenId);
    const want = lm.tokenizer.decode([...prompt, ...ids].slice(1)).slice(lm.tokenizer.decode(prompt.slice(1)).length);
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages, max_completion_tokens: 20, temperature: 0 }) });
    assert.equal(r.status, 200);
    const body = (await r.json()) as Record<string, any>;
    assert.equal(body["object"], "chat.completion");
    assert.match(body["id"], /^chatcmpl-/);
    assert.deepEqual(body["choices"][0].message, { role: "assistant", content: want });
    assert.equal(body["usage"].prompt_tokens, prompt.length);
    // Content as a list of text parts, streamed.
    const parts = messages.map((m) => ({ role: m.role, content: [{ type: "text", text: m.content }] }));
    const s = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages: parts, max_tokens: 20, temperature: 0, stream: true }) });
    const events = (await s.text()).split("\n\n").filter((x) => x.startsWith("data: ") && x !== "data: [DONE]").map((x) => JSON.parse(x.slice(6)) as Record<string, any>);
    assert.deepEqual(events[0]!["choices"][0].delta, { role: "assistant", content: "" });
    assert.ok(events.every((e) => e["object"] === "chat.completion.chunk"));
    assert.equal(events.map((e) => e["choices"][0].delta.content ?? "").join(""), want);
    assert.equal(events[events.length - 1]!["choices"][0].finish_reason, "length");
    // Log-probabilities in the chat shape: a token, its logprob and UTF-8 bytes, and the alternatives'.
    const withLp = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 }) });
    const lp = ((await withLp.json()) as Record<string, any>)["choices"][0].logprobs.content as { token: string; logprob: number; bytes: number[]; top_logprobs: { token: string; logprob: number }[] }[];
    assert.equal(lp.length, 6);
    assert.equal(lp.map((x) => x.token).join(""), want.slice(0, lp.map((x) => x.token).join("").length));
    for (const x of lp) {
      assert.deepEqual(x.bytes, [...Buffer.from(x.token, "utf8")]);
      assert.ok(x.logprob <= 0 && x.top_logprobs.length === 2 && Math.abs(x.top_logprobs[0]!.logprob - x.logprob) < 1e-6);
    }
  } finally {
    await server.close();
  }
});

test("chat requests the server cannot honour are refused by name; without max_tokens a chat runs to the model's positions", async () => {
  const server = await serve(lm, { port: 0 });
  try {
    const ask = async (body: unknown) => {
      const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify(body) });
      return { status: r.status, message: (((await r.json()) as { error?: { message: string } }).error?.message ?? "") };
    };
    assert.match((await ask({ messages: [] })).message, /no messages/);
    assert.match((await ask({ messages: [{ content: "x" }] })).message, /messages\[0\] has no role/);
    // Sent but not a list (or a message that is not an object): named as sent, not as missing.
    assert.match((await ask({ messages: "hi" })).message, /^messages "hi" is not a list of messages; hint: send e\.g\. \{"messages": \[/);
    assert.match((await ask({ messages: { role: "user", content: "hi" } })).message, /^messages \{"role":"user","content":"hi"\} is not a list of messages/);
    assert.match((await ask({ messages: [null] })).message, /^messages\[0\] null is not a message object; hint: each message is/);
    assert.match((await ask({ messages: [{ role: "user", content: "a" }, "b"] })).message, /^messages\[1\] "b" is not a message object/);
    assert.match((await ask({ messages: [{ role: "user" }] })).message, /messages\[0\] \(user\) has no content/);
    assert.match((await ask({ messages: [{ role: "system", content: null }, { role: "user", content: "x" }] })).message, /messages\[0\] \(system\) has no content/);
    assert.match((await ask({ messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] })).message, /messages\[0\]\.content is neither text/);
    assert.match((await ask({ messages, tools: [{ type: "function" }] })).message, /tools .* is not supported/);
    assert.match((await ask({ messages, max_tokens: 3, max_completion_tokens: 3 })).message, /both max_tokens and max_completion_tokens/);
    assert.match((await ask({ messages, top_logprobs: 2 })).message, /top_logprobs 2 is set without logprobs: true/);
    assert.match((await ask({ messages, logprobs: 3 })).message, /logprobs 3 is not true or false/);
    assert.match((await ask({ messages, add_generation_prompt: "yes" })).message, /add_generation_prompt "yes" is not true or false/);
    const roles = await ask({ messages: [{ role: "assistant", content: "x" }] });
    assert.equal(roles.status, 400);
    assert.match(roles.message, /roles must alternate/);
    const long = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages, temperature: 0, stop: ["."] }) });
    assert.equal(long.status, 200, "no max_tokens: room up to the model's positions, not OpenAI completions' 16");
    // A conversation of exactly the model's 512 positions (" a" is one token here), sized through /tokenize.
    const count = async (words: number) => ((await (await fetch(`${server.url}/tokenize`, { method: "POST", body: JSON.stringify({ messages: [{ role: "user", content: "a ".repeat(words) }] }) })).json()) as { count: number }).count;
    const words = 100 + 512 - (await count(100));
    assert.equal(await count(words), 512);
    const full = await ask({ messages: [{ role: "user", content: "a ".repeat(words) }] });
    assert.equal(full.status, 400);
    assert.match(full.message, /the prompt's \d+ tokens fill the model's 512 positions: there is no room for a reply; hint: shorten the conversation/, "no max_tokens sent: none named");
  } finally {
    await server.close();
  }
});

test("templates looping over content parts get parts; special tokens from special_tokens_map.json; tools and documents are none", () => {
  const d = path.join(tmpDir(), "parts");
  fs.cpSync(path.join(MODELS, "stories260K"), d, { recursive: true });
  const cfgFile = path.join(d, "tokenizer_config.json");
  const cfg = JSON.parse(fs.readFileSync(cfgFile, "utf8")) as Record<string, unknown>;
  delete cfg["bos_token"];
  const tpl = "{{ bos_token }}{% if tools is not none %}TOOLS{% endif %}{% for message in messages %}{% for c in message['content'] %}{% if c['type'] == 'text' %}[{{ c['text'] }}]{% endif %}{% endfor %}{% endfor %}";
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: tpl }));
  fs.writeFileSync(path.join(d, "special_tokens_map.json"), JSON.stringify({ bos_token: { content: "<s>" } }));
  assert.equal(loadChatTemplate(d)!.render([{ role: "user", content: "hi" }]), "<s>[hi]");
});

test("chat: the default reply limit, null fields OpenAI allows, usage null on every chunk but the last; a template that does not parse costs only the chat endpoint", async () => {
  const server = await serve(lm, { port: 0, defaultMaxTokens: 6 });
  try {
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages: [...messages, { role: "assistant", content: null }, { role: "user", content: "More." }], temperature: 0, tool_choice: "auto", max_tokens: null, stream: true, stream_options: { include_usage: true } }) });
    const events = (await r.text()).split("\n\n").filter((x) => x.startsWith("data: {")).map((x) => JSON.parse(x.slice(6)) as Record<string, any>);
    assert.ok(events.slice(0, -1).every((e) => e["usage"] === null), "usage: null until the last chunk");
    const last = events[events.length - 1]!;
    assert.ok(last["usage"].completion_tokens <= 6, "no max_tokens: --default-max-tokens");
  } finally {
    await server.close();
  }
  await assert.rejects(serve(lm, { port: 0, defaultMaxTokens: 0 }), /--default-max-tokens 0/);
  await assert.rejects(serve(lm, { port: 0, apiKey: "clé" }), /--api-key holds characters other than visible ASCII/);

  const broken = path.join(tmpDir(), "broken");
  fs.cpSync(dir, broken, { recursive: true });
  fs.writeFileSync(path.join(broken, "chat_template.jinja"), "{% for m in messages %}");
  const warnings: string[] = [];
  const s2 = await serve(broken, { port: 0, device: "reference", logger: { info: () => {}, warn: (m) => warnings.push(m) } });
  try {
    assert.match(warnings.join("\n"), /chat template does not parse.*serving without POST \/v1\/chat\/completions/);
    const c = await fetch(`${s2.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages }) });
    assert.equal(c.status, 404);
    assert.match(((await c.json()) as { error: { message: string } }).error.message, /chat template cannot be used/);
    assert.equal((await fetch(`${s2.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "Once", max_tokens: 2 }) })).status, 200);
  } finally {
    await s2.close();
  }
});

test("chat: min_tokens past the default reply limit (--default-max-tokens, or the positions the prompt leaves) is refused with a 400 naming that limit, as past an explicit max_tokens", async () => {
  const chat = (url: string, body: object) => fetch(`${url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages, temperature: 0, ignore_eos: true, ...body }) });
  const refused = async (r: Response, re: RegExp) => {
    assert.equal(r.status, 400);
    assert.match(((await r.json()) as { error: { message: string } }).error.message, re);
  };
  const server = await serve(lm, { port: 0, defaultMaxTokens: 6 });
  try {
    await refused(await chat(server.url, { min_tokens: 7 }), /^min_tokens 7 is more than the 6 tokens a reply gets when max_tokens is not sent \(the server's --default-max-tokens\); hint: send max_tokens ≥ 7 with it, or min_tokens ≤ 6$/);
    await refused(await chat(server.url, { min_tokens: 7, max_tokens: 5 }), /min_tokens 7 is more than max_tokens 5/);
    await refused(await chat(server.url, { min_tokens: 7, max_completion_tokens: 5 }), /min_tokens 7 is more than max_completion_tokens 5/);
    const atLimit = await chat(server.url, { min_tokens: 6 });
    assert.equal(atLimit.status, 200);
    assert.equal(((await atLimit.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens, 6);
    assert.equal((await chat(server.url, { min_tokens: 7, max_tokens: 8 })).status, 200, "an explicit max_tokens lifts the default");
  } finally {
    await server.close();
  }
  // With the default of 1024 past the model's 512 positions, the limit is what the prompt leaves.
  const roomy = await serve(lm, { port: 0 });
  try {
    const prompt = lm.tokenizer.encode(loadChatTemplate(dir)!.render(messages), { addSpecialTokens: false }).length;
    const room = lm.config.maxPositions - prompt;
    await refused(await chat(roomy.url, { min_tokens: room + 1 }), new RegExp(`^min_tokens ${room + 1} is more than the ${room} tokens the model's 512 positions leave after the prompt's ${prompt}; hint: send min_tokens ≤ ${room}, or shorten the conversation$`));
  } finally {
    await roomy.close();
  }
});

test("generate --chat formats each prompt with the chat template and prints the reply alone; --system without --chat is refused", async () => {
  const { spawnSync } = await import("node:child_process");
  const { ROOT } = await import("../helpers.js");
  const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, "dist/src/cli/main.js"), "generate", ...args, "--device", "reference"], { encoding: "utf8" });
  const r = cli(dir, "--chat", "--system", messages[0]!.content, "--prompt", messages[1]!.content, "--max-tokens", "12");
  assert.equal(r.status, 0, r.stderr);
  const prompt = lm.tokenizer.encode(loadChatTemplate(dir)!.render(messages), { addSpecialTokens: false });
  const want = lm.tokenizer.decode(generate(lm.model, prompt, { maxTokens: 12 }).ids, { skipSpecialTokens: true });
  assert.equal(r.stdout, want + "\n");
  const bad = cli(path.join(MODELS, "stories260K"), "--system", "x");
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /--system has no effect without --chat/);
  const none = cli(path.join(MODELS, "stories260K"), "--chat");
  assert.match(none.stderr, /has no chat template/);
});

test("without max_tokens a chat's reply is capped to what --kv-budget-mb holds after the prompt (not refused); a refusal names the field sent, or the default", async () => {
  const perToken = kvBytesPerToken(lm.config, "f32");
  // Room for the rendered conversation (62 tokens) and ~40 more, far below the model's 512 positions.
  const server = await serve(lm, { port: 0, kvCache: "f32", kvBudgetMb: (100 * perToken) / 2 ** 20 });
  try {
    const post = async (body: unknown) => {
      const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify(body) });
      return { status: r.status, json: (await r.json()) as { error?: { message: string }; usage?: { prompt_tokens: number; completion_tokens: number } } };
    };
    const r = await post({ messages, temperature: 0, ignore_eos: true });
    assert.equal(r.status, 200, r.json.error?.message);
    assert.ok(r.json.usage!.prompt_tokens + r.json.usage!.completion_tokens <= 100, JSON.stringify(r.json.usage));
    const sent = await post({ messages, max_completion_tokens: 300 });
    assert.equal(sent.status, 400);
    const over = await post({ messages, max_completion_tokens: 500 });
    assert.match(over.json.error!.message, /pass the model's 512 positions; hint: send max_completion_tokens ≤ 38, or shorten the prompt \(the server's KV budget holds 100 tokens\)/, "a limit the budget also holds");
    assert.match(sent.json.error!.message, /\+ max_completion_tokens 300 = \d+ tokens of cache take .* hint: send max_completion_tokens ≤ \d+, or shorten the prompt \(or start the server with a larger --kv-budget-mb\)/);
  } finally {
    await server.close();
  }
  const plain = await serve(lm, { port: 0 });
  try {
    const ids = Array.from({ length: 510 }, () => 300);
    const r = await fetch(`${plain.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: ids }) });
    assert.match(((await r.json()) as { error: { message: string } }).error.message, /the prompt's 510 tokens \+ max_tokens 16 \(the default: it was not sent\) = 526 pass the model's 512 positions; hint: shorten the prompt to at most 511 tokens \(it has 510\)|send max_tokens ≤ 2, or shorten/);
    const batch = await fetch(`${plain.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: ["a", "a ".repeat(600)], max_tokens: 1 }) });
    assert.match(((await batch.json()) as { error: { message: string } }).error.message, /^prompt\[1\]: the prompt holds more than the model's maximum context length of 512 tokens/);
  } finally {
    await plain.close();
  }
});

test("a chat template that renders a conversation as nothing is the server's error, naming the template, not the client's", async () => {
  const bad = path.join(tmpDir(), "empty-template");
  fs.cpSync(dir, bad, { recursive: true });
  const cfgFile = path.join(bad, "tokenizer_config.json");
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, "utf8")), chat_template: "{% for m in messages %}{{ m.contnt }}{% endfor %}" }));
  const server = await serve(loadModel(bad), { port: 0 });
  try {
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages }) });
    const err = ((await r.json()) as { error: { message: string; type: string } }).error;
    assert.equal(r.status, 500);
    assert.equal(err.type, "server_error");
    assert.match(err.message, /the model's chat template \(.*\) rendered the conversation as nothing; hint: the template should write each message's content/);
    const t = await fetch(`${server.url}/tokenize`, { method: "POST", body: JSON.stringify({ messages }) });
    assert.equal(t.status, 500, "/tokenize says the same, not count 0");
    assert.match(((await t.json()) as { error: { message: string } }).error.message, /rendered the messages as nothing/);
  } finally {
    await server.close();
  }
});

test("null means not sent: \"model\": null is the served model, /tokenize's add_generation_prompt: null in prompt form is left out", async () => {
  const server = await serve(lm, { port: 0 });
  try {
    const r = await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: null, prompt: "Once", max_tokens: 1, temperature: 0 }) });
    assert.equal(r.status, 200);
    const t = await fetch(`${server.url}/tokenize`, { method: "POST", body: JSON.stringify({ prompt: "Once", add_generation_prompt: null }) });
    assert.equal(t.status, 200);
  } finally {
    await server.close();
  }
});
