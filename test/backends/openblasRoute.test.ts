/**
 * The OpenBLAS route of the native CPU library (cblas_sgemm found at load time, run single-threaded
 * inside our OpenMP slices) on a machine without OpenBLAS: a naive cblas_sgemm stand-in
 * (test/fixtures-native/fake_cblas.c) is compiled and named by MHA2MLA_OPENBLAS, and the native
 * parity suite runs again in a child process on that route. Real OpenBLAS numbers: bench/cpu-vs-torch.sh.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { loadNativeCpu } from "../../src/backends/native/cpu.js";
import { ROOT, tmpDir } from "../helpers.js";

const cc = spawnSync("sh", ["-c", "command -v gcc || command -v cc"], { encoding: "utf8" }).stdout.trim();
const skip = typeof loadNativeCpu() === "string" ? "native CPU library not built" : !cc ? "no C compiler to build the cblas_sgemm stand-in" : false;

test("linear forward and backward through the OpenBLAS route match the reference backend", { skip }, () => {
  const so = path.join(tmpDir(), "libfakeblas.so");
  const build = spawnSync(cc, ["-O2", "-shared", "-fPIC", path.join(ROOT, "test", "fixtures-native", "fake_cblas.c"), "-o", so], { encoding: "utf8" });
  assert.equal(build.status, 0, build.stderr);
  const env: NodeJS.ProcessEnv = { ...process.env, MHA2MLA_OPENBLAS: so };
  delete env["MHA2MLA_BLAS"];
  const info = spawnSync(process.execPath, ["-e", "import('./dist/src/backends/native/cpu.js').then(m => console.log(m.loadNativeCpu().info))"], { cwd: ROOT, env, encoding: "utf8" });
  assert.match(info.stdout, /OpenBLAS .*libfakeblas\.so/, info.stderr);
  const r = spawnSync(process.execPath, ["--test", path.join(ROOT, "dist", "test", "backends", "native.test.js")], { cwd: ROOT, env, encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout.slice(-3000));
});
