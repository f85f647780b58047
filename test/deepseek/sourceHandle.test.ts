// `convert --format deepseek` opens its source checkpoint once (src/deepseek/export.ts): the header check,
// the declared-bias check, both passes and the writer share one handle, which is closed on every path,
// a dry run and a refusal included. Before, the two checks opened the folder once each before the run
// opened it a third time.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { convertDeepseek } from "../../src/deepseek/export.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { MlaError } from "../../src/errors.js";
import { MODELS, tmpDir } from "../helpers.js";

const STORIES = path.join(MODELS, "stories260K");

/** stories260K with attention_bias true and a q bias of ones in every layer (k, v and o biases zero): refused by the bias check. */
function nonZeroQBias(): string {
  const dir = path.join(tmpDir(), "q-bias");
  fs.cpSync(STORIES, dir, { recursive: true });
  const ck = Checkpoint.open(dir);
  const tensors = ck.names().flatMap((name) => {
    const e = ck.entry(name);
    const t = [{ name, dtype: e.dtype, shape: [...e.shape], data: ck.readBytes(name) }];
    const m = /^(model\.layers\.\d+\.self_attn\.)([qkvo])_proj\.weight$/.exec(name);
    if (!m) return t;
    const bias = new Float32Array(e.shape[0]!).fill(m[2] === "q" ? 1 : 0);
    return [...t, { name: `${m[1]}${m[2]}_proj.bias`, dtype: "F32" as const, shape: [bias.length], data: new Uint8Array(bias.buffer) }];
  });
  ck.close();
  writeSafetensorsSync(path.join(dir, "model.safetensors"), tensors, { format: "pt" });
  const config = path.join(dir, "config.json");
  fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(fs.readFileSync(config, "utf8")), attention_bias: true }));
  return dir;
}

/** Runs `f`, counting the checkpoints opened on `dir` and how many of them were closed. */
async function handles(dir: string, f: () => Promise<unknown>): Promise<{ opened: number; closed: number }> {
  const open = Checkpoint.open;
  const n = { opened: 0, closed: 0 };
  Checkpoint.open = (d: string) => {
    const ck = open.call(Checkpoint, d);
    if (d !== dir) return ck;
    n.opened++;
    const close = ck.close.bind(ck);
    ck.close = () => {
      n.closed++;
      close();
    };
    return ck;
  };
  try {
    await f().catch((e: unknown) => {
      if (!(e instanceof MlaError)) throw e;
    });
  } finally {
    Checkpoint.open = open;
  }
  return n;
}

test("convert --format deepseek opens its source once and closes it, written, dry run or refused", async () => {
  const out = () => path.join(tmpDir(), "out");
  const written = out();
  assert.deepEqual(await handles(STORIES, () => convertDeepseek(STORIES, { rank: 2, out: written, progress: null })), { opened: 1, closed: 1 }, "written");
  assert.ok(fs.existsSync(path.join(written, "config.json")));
  assert.deepEqual(await handles(STORIES, () => convertDeepseek(STORIES, { rank: 2, out: out(), dryRun: true, progress: null })), { opened: 1, closed: 1 }, "dry run");
  const biased = nonZeroQBias();
  const refused = out();
  await assert.rejects(convertDeepseek(biased, { rank: 2, out: refused, progress: null }), (e: unknown) => e instanceof MlaError && /q_proj\.bias is not zero/.test(e.message));
  assert.deepEqual(await handles(biased, () => convertDeepseek(biased, { rank: 2, out: refused, progress: null })), { opened: 1, closed: 1 }, "refused by the bias check");
  assert.equal(fs.existsSync(refused), false);
});
