#!/usr/bin/env node
// Builds the native CPU library (native/cpu/*.cpp → build/native/libmla_cpu.so) with the system C++
// compiler, during `npm install`. Prints one line saying what it did. Never fails the install: without
// a compiler, or when the build fails, the TypeScript reference backend is used.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const outDir = path.join(root, "build", "native");
const out = path.join(outDir, "libmla_cpu.so");
const sources = fs.readdirSync(path.join(root, "native", "cpu")).filter((f) => f.endsWith(".cpp")).map((f) => path.join(root, "native", "cpu", f));

function which(cmd) {
  const r = spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}

if (process.env.MHA2MLA_SKIP_NATIVE) {
  console.log("mha2mla: MHA2MLA_SKIP_NATIVE is set: native CPU library not built, the TypeScript reference backend will be used");
  process.exit(0);
}
const cxx = [process.env.CXX, "g++", "c++", "clang++"].filter(Boolean).find((c) => which(c));
if (!cxx) {
  console.log("mha2mla: no C++ compiler found (CXX, g++, c++, clang++): native CPU library not built, the TypeScript reference backend will be used");
  process.exit(0);
}
fs.mkdirSync(outDir, { recursive: true });
// -z nodelete: the library is never unloaded, so OpenMP worker threads never outlive their code (a
// dlclose at process exit otherwise crashes Node).
// Compiled beside and renamed into place, so a process starting meanwhile never loads a half-written library.
const tmp = `${out}.tmp-${process.pid}`;
const common = ["-O3", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-Wl,-z,nodelete", `-I${path.join(root, "native", "include")}`, ...sources, "-ldl", "-o", tmp];
const attempts = [
  { name: "-march=native", flags: ["-march=native", "-DMLA_MARCH_NATIVE", ...common] },
  { name: "portable", flags: common },
];
let last = "";
for (const a of attempts) {
  const r = spawnSync(cxx, a.flags, { encoding: "utf8" });
  if (r.status === 0) {
    fs.renameSync(tmp, out);
    fs.writeFileSync(path.join(outDir, "build.json"), JSON.stringify({ compiler: cxx, variant: a.name, flags: a.flags.filter((f) => f.startsWith("-") && !f.startsWith("-I")), built: new Date().toISOString() }, null, 2) + "\n");
    console.log(`mha2mla: built the native CPU library ${path.relative(root, out)} with ${cxx} (${a.name}, OpenMP)`);
    process.exit(0);
  }
  last = (r.stderr || r.error?.message || "").trim().split("\n").slice(-3).join(" | ");
}
fs.rmSync(tmp, { force: true });
fs.rmSync(out, { force: true });
console.log(`mha2mla: building the native CPU library failed (${last}): the TypeScript reference backend will be used`);
