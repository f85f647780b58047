/**
 * MHA2MLA_NATIVE_LIB and MHA2MLA_CUDA_LIB: a library the user names and that does not load is an
 * error naming the variable, the path and the loader's reason; the built library failing to load
 * stays a reason for the caller to fall back on (select.test.ts covers that fallback).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { interfaceHash, libraryFile, missingLibrary, staleLibrary, unloadableLibrary } from "../../src/backends/native/libraryFile.js";
import { MlaError } from "../../src/errors.js";
import { ROOT, tmpDir } from "../helpers.js";
import fs from "node:fs";

const BUILT = path.join(ROOT, "build", "native", "libmla_cpu.so");

test("the variable names the file (resolved from the working folder, as dlopen would not); unset or empty, the built library", () => {
  for (const env of [{}, { MHA2MLA_NATIVE_LIB: "" }]) assert.deepEqual(libraryFile("MHA2MLA_NATIVE_LIB", "libmla_cpu.so", env), { path: BUILT, named: null, built: BUILT });
  assert.deepEqual(libraryFile("MHA2MLA_NATIVE_LIB", "libmla_cpu.so", { MHA2MLA_NATIVE_LIB: "lib/x.so" }), { path: path.resolve("lib/x.so"), named: { variable: "MHA2MLA_NATIVE_LIB", value: "lib/x.so" }, built: BUILT });
});

test("the built library missing or unloadable is a reason to fall back; a named one is an error with the variable, the path, the reason and a hint", () => {
  const built = { path: "/no/libmla_cpu.so", named: null, built: "/no/libmla_cpu.so" };
  assert.equal(missingLibrary(built, "npm run build:native builds it"), "/no/libmla_cpu.so does not exist (npm run build:native builds it)");
  assert.equal(unloadableLibrary(built, "invalid ELF header"), "/no/libmla_cpu.so cannot be loaded: invalid ELF header");
  const named = { path: "/abs/x.so", named: { variable: "MHA2MLA_CUDA_LIB", value: "x.so" }, built: "/b/libmla_cuda.so" };
  const hint = /\n  hint: point MHA2MLA_CUDA_LIB at a library built by `npm run build:native`, or unset it to use the built one \(\/b\/libmla_cuda\.so\)$/;
  assert.throws(() => missingLibrary(named, "unused"), (e: unknown) => e instanceof MlaError && e.code === "NOT_FOUND" && /^MHA2MLA_CUDA_LIB=x\.so: no such file\n/.test(e.message) && hint.test(e.message));
  assert.throws(() => unloadableLibrary(named, "invalid ELF header"), (e: unknown) => e instanceof MlaError && e.code === "UNSUPPORTED" && /^MHA2MLA_CUDA_LIB=x\.so: \/abs\/x\.so cannot be loaded: invalid ELF header\n/.test(e.message) && hint.test(e.message));
});

test("the CLI stops on a named library that does not load instead of running on another backend", () => {
  // MHA2MLA_NO_CUDA: on a GPU machine auto would pick CUDA and never load the CPU library.
  const cases: [Record<string, string>, string][] = [
    [{ MHA2MLA_NO_CUDA: "1", MHA2MLA_NATIVE_LIB: "/no/such/libmla_cpu.so" }, "error: MHA2MLA_NATIVE_LIB=/no/such/libmla_cpu.so: no such file\n"],
    [{ MHA2MLA_NO_CUDA: "1", MHA2MLA_NATIVE_LIB: "README.md" }, `error: MHA2MLA_NATIVE_LIB=README.md: ${path.join(ROOT, "README.md")} cannot be loaded: Failed to load`],
    [{ MHA2MLA_NO_CUDA: "", MHA2MLA_CUDA_LIB: "/no/such/libmla_cuda.so" }, "error: MHA2MLA_CUDA_LIB=/no/such/libmla_cuda.so: no such file\n"],
  ];
  for (const [env, said] of cases) {
    const r = spawnSync(process.execPath, [path.join(ROOT, "dist", "src", "cli", "main.js"), "generate", "stories260K", "--prompt", "Once", "--max-tokens", "1"], { cwd: ROOT, encoding: "utf8", env: { ...process.env, ...env } });
    assert.equal(r.status, 1, `${JSON.stringify(env)}: ${r.stderr}`);
    assert.ok(r.stderr.startsWith(said), r.stderr);
    assert.match(r.stderr, /hint: .*or unset it to use the built one/);
    assert.doesNotMatch(r.stderr, /^device: /m, "no backend was picked");
  }
});

test("a built library whose record names another C interface (an older checkout's) is refused with the rebuild command; a matching, absent or named one is not", () => {
  const dir = tmpDir();
  const lib = { path: path.join(dir, "libmla_cpu.so"), named: null, built: path.join(dir, "libmla_cpu.so") };
  assert.equal(staleLibrary(lib, "abc"), null, "no record: nothing to check");
  for (const [record, stale] of [[{ abi: "abc" }, false], [{ abi: "def" }, true], [{ compiler: "g++" }, true]] as const) {
    fs.writeFileSync(`${lib.path}.json`, JSON.stringify(record));
    const why = staleLibrary(lib, "abc");
    if (stale) assert.match(why ?? "", /was built against another native\/include\/mla\.h than this code calls \(an older checkout\): run `npm run build:native`$/);
    else assert.equal(why, null);
  }
  assert.equal(staleLibrary({ ...lib, named: { variable: "MHA2MLA_NATIVE_LIB", value: lib.path } }, "abc"), null, "a named library is the user's to vouch for");
  assert.equal(staleLibrary(lib, null), null, "no header to hash: nothing to check against");
  assert.match(interfaceHash() ?? "", /^[0-9a-f]{16}$/);
  // Where this machine built the library (no C++ compiler: nothing to check).
  if (fs.existsSync(`${BUILT}.json`)) assert.equal((JSON.parse(fs.readFileSync(`${BUILT}.json`, "utf8")) as { abi?: string }).abi, interfaceHash(), "npm run build:native records the interface it built against");
});
