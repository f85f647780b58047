/** Device selection: a missing CUDA library is a clear error for --device cuda and a fallback for auto. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { loadCuda } from "../../src/backends/native/cuda.js";
import { selectBackend } from "../../src/backends/select.js";
import { MlaError } from "../../src/errors.js";

const cuda = loadCuda();
const skip = typeof cuda === "string" ? false : "the CUDA library loads here (GPU machine): its errors are covered by cuda.test.ts";

test("--device cuda without a usable CUDA library names the file and how to build it; auto falls back", { skip }, () => {
  const lines: string[] = [];
  const log = { info: (m: string) => lines.push(m), warn: (m: string) => lines.push(m) };
  assert.throws(
    () => selectBackend("cuda", log),
    (e: unknown) => e instanceof MlaError && e.code === "UNSUPPORTED" && /--device cuda: .*libmla_cuda\.so/.test(e.message) && /hint: use --device cpu/.test(e.message),
  );
  const b = selectBackend("auto", log);
  assert.notEqual(b.name, "cuda");
  assert.ok(lines.some((l) => /^device: /.test(l)), lines.join("\n"));
});
