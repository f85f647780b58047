/**
 * The package as a script outside the repository gets it: `npm pack` (exactly the files a publish
 * would hold, from the built dist/) unpacked into APP/node_modules/mha2mla of a temporary app whose
 * other node_modules entries link to this checkout's, so nothing is downloaded and no install
 * script runs (the app has no native library: the TypeScript backend, as without a compiler).
 */
import { execFile, execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, tmpDir } from "../helpers.js";

export function installPackage(): string {
  const app = tmpDir("mha2mla-app-");
  const packed = JSON.parse(execFileSync("npm", ["pack", "--ignore-scripts", "--offline", "--json", "--pack-destination", app], { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })) as { filename: string }[];
  const pkg = path.join(app, "node_modules", "mha2mla");
  fs.mkdirSync(pkg, { recursive: true });
  execFileSync("tar", ["xzf", path.join(app, packed[0]!.filename), "-C", pkg, "--strip-components=1"]);
  for (const dep of fs.readdirSync(path.join(ROOT, "node_modules"))) {
    if (dep.startsWith(".") || dep === "mha2mla") continue;
    fs.symlinkSync(path.join(ROOT, "node_modules", dep), path.join(app, "node_modules", dep));
  }
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }) + "\n");
  return app;
}

/** Runs `node file` in the app; returns its exit code and both streams. */
export function runNode(app: string, file: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [file], { cwd: app, encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Type-checks (with `noEmit: false`, compiles next to them) `files` in the app under `options`, the
 * declarations of the package and of its dependencies included; resolves to tsc's exit code and output.
 * Asynchronous, so that several checks share the cores.
 */
export function tsc(app: string, name: string, files: string[], options: Record<string, unknown>): Promise<{ code: number | null; output: string }> {
  const config = path.join(app, `tsconfig.${name}.json`);
  fs.writeFileSync(config, JSON.stringify({ compilerOptions: { target: "ES2022", strict: true, skipLibCheck: false, types: ["node"], noEmit: true, ...options }, files }));
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", config], { cwd: app, encoding: "utf8" }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, output: stdout + stderr }));
  });
}
