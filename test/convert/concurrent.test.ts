import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { convert } from "../../src/convert/pipeline.js";
import { MODELS, tmpDir } from "../helpers.js";

// A script may convert several models at once. Each conversion's float64 route comes from its own
// --device (reference: TypeScript; cpu: the native library), and the two give slightly different
// floats, so a route leaking from one conversion into the other would change its bytes.
test("two conversions at once on different float64 routes write what each writes alone", async () => {
  const dir = tmpDir();
  const src = path.join(MODELS, "stories260K-mha");
  const settings = { rank: 8, ropePairs: 1, ropeStrategy: "uniform" as const, progress: null };
  const run = (device: "reference" | "cpu", out: string) => convert(src, { ...settings, device, out: path.join(dir, out) });
  await Promise.all([run("reference", "ts-together"), run("cpu", "native-together")]);
  await run("reference", "ts-alone");
  await run("cpu", "native-alone");
  const bytes = (out: string) => fs.readFileSync(path.join(dir, out, "model.safetensors"));
  assert.ok(bytes("ts-together").equals(bytes("ts-alone")), "the TypeScript-route conversion changed when run beside the native one");
  assert.ok(bytes("native-together").equals(bytes("native-alone")), "the native-route conversion changed when run beside the TypeScript one");
  assert.ok(!bytes("ts-alone").equals(bytes("native-alone")), "the two routes must differ for this test to see a leak");
});
