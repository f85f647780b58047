/** MHA2MLA_CUDA_ATTENTION is checked when the CUDA backend starts (no GPU needed for the check itself). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkAttentionRoute, CUDA_ATTENTION_ROUTES } from "../../src/backends/native/cuda.js";
import { MlaError } from "../../src/errors.js";

test("MHA2MLA_CUDA_ATTENTION: every route and unset are accepted; a misspelt one is refused with the list", () => {
  for (const r of [undefined, "", ...CUDA_ATTENTION_ROUTES]) assert.doesNotThrow(() => checkAttentionRoute(r));
  assert.throws(() => checkAttentionRoute("fuse"), (e: Error) => e instanceof MlaError && /MHA2MLA_CUDA_ATTENTION=fuse is not an attention route/.test(e.message) && /hint: use one of default, cudnn, fused, gemm, flash, rows, or unset it/.test(e.message));
});
