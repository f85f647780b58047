import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { normalizeHfConfig, readHfConfig } from "../../src/io/hfConfig.js";
import { ropeInvFreq } from "../../src/model/config.js";
import { MODELS, tmpDir } from "../helpers.js";

const base = { model_type: "llama", hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 8, vocab_size: 100 };

test("stories260K normalizes to GQA 8/4, head_dim 8, tied", () => {
  const c = readHfConfig(path.join(MODELS, "stories260K"));
  assert.equal(c.heads, 8);
  assert.equal(c.kvHeads, 4);
  assert.equal(c.headDim, 8);
  assert.equal(c.tieEmbeddings, true);
  assert.equal(c.qkvBias, false);
});

test("defaults and variants: MHA when kv heads are absent, qwen2 q/k/v bias, mistral window, eos lists", () => {
  const c = normalizeHfConfig(base);
  assert.equal(c.kvHeads, 8);
  assert.equal(c.headDim, 8);
  assert.equal(c.tieEmbeddings, false);
  const q = normalizeHfConfig({ ...base, model_type: "qwen2", num_key_value_heads: 2, eos_token_id: [7, 8] });
  assert.equal(q.qkvBias, true);
  assert.equal(q.oBias, false);
  assert.equal(q.eosTokenId, 7);
  assert.equal(q.slidingWindow, null);
  assert.equal(normalizeHfConfig({ ...base, model_type: "mistral", sliding_window: 4096 }).slidingWindow, 4096);
  const l = normalizeHfConfig({ ...base, attention_bias: true });
  assert.equal(l.qkvBias && l.oBias, true);
});

test("sliding windows as transformers places them: Qwen2 from max_window_layers on, layer_types first, a mix refused", () => {
  const qwen = { ...base, model_type: "qwen2", num_hidden_layers: 4, sliding_window: 32, use_sliding_window: true };
  assert.equal(normalizeHfConfig({ ...qwen }).slidingWindow, null, "default max_window_layers 28 ≥ 4 layers: none slide");
  assert.equal(normalizeHfConfig({ ...qwen, max_window_layers: 0 }).slidingWindow, 32);
  assert.equal(normalizeHfConfig({ ...qwen, use_sliding_window: false, max_window_layers: 0 }).slidingWindow, null);
  assert.throws(() => normalizeHfConfig({ ...qwen, max_window_layers: 2 }), (e: unknown) => e instanceof MlaError && /2 of 4 layers use a sliding window of 32/.test(e.message));
  const full = ["full_attention", "full_attention"];
  assert.equal(normalizeHfConfig({ ...base, model_type: "mistral", sliding_window: 64, layer_types: full }).slidingWindow, null);
  assert.equal(normalizeHfConfig({ ...base, model_type: "mistral", sliding_window: 64, layer_types: ["sliding_attention", "sliding_attention"] }).slidingWindow, 64);
  assert.throws(() => normalizeHfConfig({ ...base, layer_types: ["full_attention"] }), (e: unknown) => e instanceof MlaError && /each of the 2 layers/.test(e.message));
  // Qwen2 without use_sliding_window: no window whatever layer_types says (Qwen2Config sets sliding_window to None first).
  assert.equal(normalizeHfConfig({ ...qwen, num_hidden_layers: 2, use_sliding_window: false, layer_types: ["sliding_attention", "sliding_attention"] }).slidingWindow, null);
});

test("sliding_window: null or absent is full attention; where a layer slides, a whole number ≥ 1, else refused naming config.json and the key", () => {
  const mistral = { ...base, model_type: "mistral" };
  assert.equal(normalizeHfConfig({ ...mistral, sliding_window: null }).slidingWindow, null);
  assert.equal(normalizeHfConfig({ ...mistral }).slidingWindow, null);
  assert.equal(normalizeHfConfig({ ...mistral, sliding_window: 1 }).slidingWindow, 1);
  for (const bad of [0, -4, 2.5, "4096", true, 1e400])
    assert.throws(
      () => normalizeHfConfig({ ...mistral, sliding_window: bad }, "/m/config.json"),
      (e: unknown) => e instanceof MlaError && e.code === "BAD_CONFIG" && /^\/m\/config\.json: "sliding_window" is \S+, not a whole number ≥ 1\n  hint: .*null \(or remove it\) for full attention/.test(e.message),
      JSON.stringify(bad),
    );
  const qwen = { ...base, model_type: "qwen2", sliding_window: 0, max_window_layers: 0 };
  assert.throws(() => normalizeHfConfig({ ...qwen, use_sliding_window: true }), /"sliding_window" is 0/);
  // Not read where no layer slides, as transformers ignores it there: Qwen2 without use_sliding_window, a Llama, layers all full.
  assert.equal(normalizeHfConfig({ ...qwen, use_sliding_window: false }).slidingWindow, null);
  assert.equal(normalizeHfConfig({ ...base, sliding_window: 0 }).slidingWindow, null);
  assert.equal(normalizeHfConfig({ ...mistral, sliding_window: 0, layer_types: ["full_attention", "full_attention"] }).slidingWindow, null);
});

test("rope_scaling llama3 and linear, in both the rope_scaling and the v5 rope_parameters spelling", () => {
  const s = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
  const a = normalizeHfConfig({ ...base, rope_scaling: s, rope_theta: 500000 });
  const b = normalizeHfConfig({ ...base, rope_parameters: { ...s, rope_theta: 500000 } });
  assert.deepEqual(a.rope, b.rope);
  assert.equal(a.rope.scaling?.type, "llama3");
  const inv = ropeInvFreq(128, a.rope);
  const plain = ropeInvFreq(128, { theta: 500000, scaling: null });
  assert.equal(inv[0], plain[0], "high frequencies untouched");
  assert.ok(Math.abs(inv[63]! - plain[63]! / 8) < 1e-20, "low frequencies divided by factor");
  const lin = normalizeHfConfig({ ...base, rope_scaling: { type: "linear", factor: 4 } });
  assert.deepEqual(lin.rope.scaling, { type: "linear", factor: 4 });
  assert.equal(normalizeHfConfig({ ...base, rope_scaling: { rope_type: "default" } }).rope.scaling, null);
  // No type and nothing to scale by (an empty object, or transformers 5's rope_parameters with only the theta): none.
  assert.equal(normalizeHfConfig({ ...base, rope_scaling: {} }).rope.scaling, null);
  assert.equal(normalizeHfConfig({ ...base, rope_scaling: { factor: 1 } }).rope.scaling, null);
  assert.equal(normalizeHfConfig({ ...base, rope_parameters: { rope_theta: 10000 } }).rope.scaling, null);
});

const badConfigs: [string, Record<string, unknown>, RegExp][] = [
  ["unsupported model_type", { ...base, model_type: "gpt2" }, /model_type "gpt2" is not supported/],
  ["no model_type", { ...base, model_type: undefined }, /has no "model_type"[\s\S]*"model_type": "llama"/],
  ["unsupported rope_scaling", { ...base, rope_scaling: { type: "yarn", factor: 4 } }, /rope_scaling type "yarn" is not supported/],
  ["dynamic rope_scaling", { ...base, rope_scaling: { rope_type: "dynamic", factor: 2 } }, /"dynamic" is not supported/],
  ["rope_scaling a list", { ...base, rope_scaling: [1] }, /rope_scaling is \[1\]/],
  ["rope_scaling a factor without a type", { ...base, rope_scaling: { factor: 4 } }, /rope_scaling gives a factor \(4\) but no "rope_type"/],
  ["missing hidden_size", { ...base, hidden_size: undefined }, /"hidden_size" is missing/],
  ["heads not a multiple of kv heads", { ...base, num_key_value_heads: 3 }, /not a multiple of num_key_value_heads 3/],
  ["non-SwiGLU activation", { ...base, hidden_act: "gelu" }, /hidden_act "gelu"/],
];

for (const [name, raw, re] of badConfigs) {
  test(`config refused: ${name}`, () => {
    assert.throws(() => normalizeHfConfig(raw, "x/config.json"), (e: Error) => e instanceof MlaError && re.test(e.message) && e.message.includes("x/config.json") && /hint:/.test(e.message));
  });
}

test("config.json that is not JSON names the file", () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, "config.json"), "{oops");
  assert.throws(() => readHfConfig(dir), (e: Error) => e instanceof MlaError && e.code === "BAD_CONFIG" && e.message.includes(path.join(dir, "config.json")));
});

test("stop ids: every eos_token_id of config.json and generation_config.json; one EOS alone adds none", () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...base, eos_token_id: [128001, 128008] }));
  fs.writeFileSync(path.join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [128001, 128009] }));
  const c = readHfConfig(dir);
  assert.equal(c.eosTokenId, 128001);
  assert.deepEqual(c.stopTokenIds, [128001, 128008, 128009]);
  fs.writeFileSync(path.join(dir, "generation_config.json"), "not json");
  assert.deepEqual(readHfConfig(dir).stopTokenIds, [128001, 128008], "a generation_config.json that does not parse adds nothing");
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...base, eos_token_id: 2 }));
  fs.writeFileSync(path.join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: 2 }));
  assert.equal(readHfConfig(dir).stopTokenIds, undefined);
  assert.equal(readHfConfig(path.join(MODELS, "stories260K")).stopTokenIds, undefined);
});

test("a rope_scaling factor below 1 and a hidden_size heads do not divide (no head_dim) are refused, naming the keys the file has", () => {
  const base = { model_type: "llama", hidden_size: 64, num_attention_heads: 8, num_hidden_layers: 1, intermediate_size: 128, vocab_size: 32, max_position_embeddings: 64, rms_norm_eps: 1e-5 };
  for (const type of ["linear", "llama3"]) assert.throws(() => normalizeHfConfig({ ...base, rope_scaling: { type, factor: 0 } }), /rope_scaling factor 0 is below 1[\s\S]*hint:/);
  assert.throws(() => normalizeHfConfig({ ...base, hidden_size: 65 }), /hidden_size 65 is not a multiple of num_attention_heads 8, and there is no head_dim/);
  assert.equal(normalizeHfConfig({ ...base, rope_scaling: { type: "linear", factor: 2 } }).rope.scaling?.type, "linear");
});

test("rope_theta 0, negative or not a number is refused naming it (0 made every inverse frequency 1/0: NaN scores, no error)", () => {
  for (const bad of [{ rope_theta: 0 }, { rope_theta: -10000 }, { rope_parameters: { rope_type: "default", rope_theta: 0 } }, { rope_parameters: { rope_type: "default", rope_theta: "10000" } }])
    assert.throws(() => normalizeHfConfig({ ...base, ...bad }), (e: unknown) => e instanceof MlaError && e.code === "BAD_CONFIG" && /rope_theta"? is .*(not a positive number|not a non-negative number)[\s\S]*hint:/.test(e.message), JSON.stringify(bad));
  assert.equal(normalizeHfConfig({ ...base, rope_parameters: { rope_type: "default", rope_theta: 500000 } }).rope.theta, 500000);
  assert.equal(normalizeHfConfig(base).rope.theta, 10000);
});
