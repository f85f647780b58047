/** The CUDA backend's environment switches are checked when it starts (no GPU needed for the check itself). */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { packageRoot } from "../../src/io/modelDir.js";
import { checkCudaEnv, CUDA_ATTENTION_ROUTES, CUDA_SWITCHES, cudaRoutes } from "../../src/backends/native/cudaEnv.js";
import { MlaError } from "../../src/errors.js";

const refused = (env: Record<string, string>, message: RegExp, hint: RegExp) =>
  assert.throws(() => checkCudaEnv(env), (e: Error) => e instanceof MlaError && message.test(e.message) && hint.test(e.message), JSON.stringify(env));

test("MHA2MLA_CUDA_ATTENTION: every route and unset are accepted; a misspelt one is refused with the list", () => {
  for (const r of [undefined, "", ...CUDA_ATTENTION_ROUTES]) assert.doesNotThrow(() => checkCudaEnv({ MHA2MLA_CUDA_ATTENTION: r }));
  refused({ MHA2MLA_CUDA_ATTENTION: "fuse" }, /MHA2MLA_CUDA_ATTENTION=fuse is not an attention route/, /hint: use one of default, cudnn, fused, gemm, flash, rows, or unset it/);
});

test("the CUDA switches: documented values and in-range numbers pass; a misspelt route or a number out of range is refused, naming what is accepted", () => {
  assert.doesNotThrow(() => checkCudaEnv({}));
  assert.doesNotThrow(() => checkCudaEnv({ MHA2MLA_MHA_DECODE: "cublas", MHA2MLA_LATENT_DECODE: "gemm", MHA2MLA_GEMV_ROWS: "0", MHA2MLA_DECODE_MIN_TILES: "64", MHA2MLA_DECODE_GRAPHS: "0", MHA2MLA_CUDA_PROFILE: "1", PATH: "/bin" }));
  refused({ MHA2MLA_MHA_DECODE: "kernels" }, /MHA2MLA_MHA_DECODE=kernels is not an MHA decode route/, /use one of kernel, cublas, or unset it/);
  refused({ MHA2MLA_LATENT_DECODE: "cublas" }, /MHA2MLA_LATENT_DECODE=cublas is not a latent decode route/, /use gemm, or unset it/);
  refused({ MHA2MLA_GEMV_ROWS: "33" }, /MHA2MLA_GEMV_ROWS=33 is not a row limit/, /use a whole number from 0 to 32, or unset it/);
  refused({ MHA2MLA_GEMV_MMA_ROWS: "0" }, /MHA2MLA_GEMV_MMA_ROWS=0/, /1 to 33/);
  refused({ MHA2MLA_GEMV_MMA_ROWS: "34" }, /MHA2MLA_GEMV_MMA_ROWS=34/, /1 to 33/);
  refused({ MHA2MLA_DECODE_MIN_TILES: "0" }, /MHA2MLA_DECODE_MIN_TILES=0/, /from 1 to 64/);
  refused({ MHA2MLA_DECODE_MIN_TILES: "2.5" }, /MHA2MLA_DECODE_MIN_TILES=2\.5/, /whole number/);
  // Any non-empty value would turn profiling on, "0" included.
  refused({ MHA2MLA_CUDA_PROFILE: "0" }, /MHA2MLA_CUDA_PROFILE=0 is not a profiling switch/, /use 1, or unset it/);
  assert.doesNotThrow(() => checkCudaEnv({ MHA2MLA_CUDA_DEVICE: "1" }));
  refused({ MHA2MLA_CUDA_DEVICE: "x" }, /MHA2MLA_CUDA_DEVICE=x is not a GPU index/, /whole number from 0 to 1023/);
});

test("every CUDA switch the check knows is documented in the README", () => {
  const readme = fs.readFileSync(path.join(packageRoot(), "README.md"), "utf8");
  for (const s of CUDA_SWITCHES) assert.match(readme, new RegExp("`" + s.name + "[=`]"), `${s.name} is not in the README`);
});

test("cudaRoutes: one string that changes with any per-call route switch (a recorded decode step is recorded again), and a value set mid-process is refused like one set at start-up", () => {
  const a = cudaRoutes({}), b = cudaRoutes({ MHA2MLA_GEMV_ROWS: "0" }), c = cudaRoutes({ MHA2MLA_MHA_DECODE: "kernel" });
  assert.equal(new Set([a, b, c]).size, 3);
  assert.equal(cudaRoutes({ MHA2MLA_GEMV_ROWS: "0", PATH: "/bin", MHA2MLA_DECODE_MIN_TILES: "4" }), b, "variables that are not per-call switches do not count");
  assert.equal(cudaRoutes({ MHA2MLA_LATENT_DECODE: "gemm" }) === a, false);
  assert.equal(cudaRoutes({ MHA2MLA_DECODE_BATCH: "rows" }) === a, false);
  refused({ MHA2MLA_GEMV_ROWS: "40" }, /MHA2MLA_GEMV_ROWS=40/, /0 to 32/);
  assert.throws(() => cudaRoutes({ MHA2MLA_GEMV_ROWS: "40" }), /MHA2MLA_GEMV_ROWS=40/);
});
