#!/usr/bin/env node
// Builds the native libraries during `npm install`, one line each saying what it did:
//  - build/native/libmla_cpu.so from native/cpu/*.cpp with the system C++ compiler (OpenMP);
//  - build/native/libmla_cuda.so from native/cuda/*.cu when nvcc is found (CUDA_HOME, /usr/local/cuda or PATH).
// Never fails the install: without a compiler, or when a build fails, the other backends are used.
// Each library is compiled beside its final name and renamed, so a process starting meanwhile never
// loads a half-written file.
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const outDir = path.join(root, "build", "native");
const include = `-I${path.join(root, "native", "include")}`;

function which(cmd) {
  const r = spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}

function sourcesOf(dir, ext) {
  return fs.readdirSync(path.join(root, "native", dir)).filter((f) => f.endsWith(ext)).sort().map((f) => path.join(root, "native", dir, f));
}

/** A failed compiler run's first error lines (else its last lines), on one line. */
function errorLines(stderr) {
  const lines = stderr.trim().split("\n");
  return lines.filter((l) => /error|fatal/i.test(l)).slice(0, 2).join(" | ") || lines.slice(-2).join(" | ");
}

/** The built library `tmp` in place as `out`, with a record of how attempt `a` (its `flags`) built it. */
function install(tmp, out, compiler, a, flags) {
  fs.renameSync(tmp, out);
  // abi: the C interface the library was built against (src/backends/native/libraryFile.ts, interfaceHash),
  // so that a library left from an older checkout is refused instead of called with other arguments.
  const abi = crypto.createHash("sha256").update(fs.readFileSync(path.join(root, "native", "include", "mla.h"))).digest("hex").slice(0, 16);
  const record = { compiler, variant: a.name, flags: flags.filter((f) => f.startsWith("-") && !f.startsWith("-I")), ...(a.record ?? {}), abi, built: new Date().toISOString() };
  fs.writeFileSync(`${out}.json`, JSON.stringify(record, null, 2) + "\n");
}

/**
 * Tries each flag set in turn; returns the variant that built, or the last error. `errors` maps each
 * failed variant to its first error lines (so a fallback can say why the better build failed).
 */
function build(compiler, out, attempts) {
  fs.mkdirSync(outDir, { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  let last = "";
  const errors = {};
  for (const a of attempts) {
    const r = spawnSync(compiler, [...a.flags, "-o", tmp], { encoding: "utf8" });
    if (r.status === 0) {
      install(tmp, out, compiler, a, a.flags);
      return { ok: true, variant: a.name, errors };
    }
    last = errorLines(r.stderr || r.error?.message || "");
    errors[a.name] = last;
  }
  fs.rmSync(tmp, { force: true });
  fs.rmSync(out, { force: true });
  return { ok: false, error: last };
}

/** Runs `compiler args` asynchronously: its exit status and stderr. */
function run(compiler, args) {
  return new Promise((resolve) => {
    const child = spawn(compiler, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (b) => (stderr += b.toString()));
    child.on("error", (e) => resolve({ status: -1, stderr: e.message }));
    child.on("close", (status) => resolve({ status, stderr }));
  });
}

/**
 * `build` for a library of many sources that each take long (the CUDA kernels): every source compiled
 * on its own, as many at once as there are cores, then linked. One nvcc call over all sources compiles
 * them one after another: 126 s on the GPU machine (16 cores), against 62 s this way, most of it the
 * slowest source alone.
 * Each attempt has `compile` flags (for every source), optionally `archFor(source)`: the arch flags that
 * replace `archFlags` for that one source, and `link` flags.
 */
async function buildParallel(compiler, out, sources, attempts) {
  fs.mkdirSync(outDir, { recursive: true });
  const objDir = fs.mkdtempSync(path.join(outDir, `obj-${path.basename(out, ".so")}-`));
  const tmp = `${out}.tmp-${process.pid}`;
  const errors = {};
  let last = "";
  try {
    for (const a of attempts) {
      const objects = sources.map((src, i) => path.join(objDir, `${i}-${path.basename(src)}.o`));
      let next = 0, failed = null;
      const worker = async () => {
        while (next < sources.length && !failed) {
          const i = next++;
          const own = a.archFor?.(sources[i]);
          const flags = own ? [...own, ...a.compile.filter((f) => !a.archFlags.includes(f))] : a.compile;
          const r = await run(compiler, [...flags, "-c", sources[i], "-o", objects[i]]);
          if (r.status !== 0) failed ??= `${path.basename(sources[i])}: ${errorLines(r.stderr)}`;
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, Math.min(sources.length, os.availableParallelism?.() ?? os.cpus().length)) }, worker));
      if (!failed) {
        const r = await run(compiler, [...objects, ...a.link, "-o", tmp]);
        if (r.status === 0) {
          install(tmp, out, compiler, a, [...a.compile, ...a.link]);
          return { ok: true, variant: a.name, errors };
        }
        failed = `linking: ${errorLines(r.stderr)}`;
      }
      errors[a.name] = last = failed;
    }
  } finally {
    fs.rmSync(objDir, { recursive: true, force: true });
    fs.rmSync(tmp, { force: true });
  }
  // No library, and no record of one: a failed build leaves nothing that says a library was built.
  for (const f of [out, `${out}.json`]) fs.rmSync(f, { force: true });
  return { ok: false, error: last };
}

function buildCpu() {
  if (process.env.MHA2MLA_SKIP_NATIVE) return "mha2mla: MHA2MLA_SKIP_NATIVE is set: native CPU library not built, the TypeScript reference backend will be used";
  const cxx = [process.env.CXX, "g++", "c++", "clang++"].filter(Boolean).find((c) => which(c));
  if (!cxx) return "mha2mla: no C++ compiler found (CXX, g++, c++, clang++): native CPU library not built, the TypeScript reference backend will be used";
  const out = path.join(outDir, "libmla_cpu.so");
  // -z nodelete: the library is never unloaded, so OpenMP worker threads never outlive their code (a
  // dlclose at process exit otherwise crashes Node). -ldl: OpenBLAS is looked up at load time.
  const common = ["-O3", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-Wl,-z,nodelete", include, ...sourcesOf("cpu", ".cpp"), "-ldl"];
  const r = build(cxx, out, [
    { name: "-march=native", flags: ["-march=native", "-DMLA_MARCH_NATIVE", ...common] },
    { name: "portable", flags: common },
  ]);
  return r.ok
    ? `mha2mla: built the native CPU library ${path.relative(root, out)} with ${cxx} (${r.variant}, OpenMP)`
    : `mha2mla: building the native CPU library failed (${r.error}): the TypeScript reference backend will be used`;
}

function findNvcc() {
  for (const home of [process.env.CUDA_HOME, process.env.CUDA_PATH, "/usr/local/cuda"].filter(Boolean)) {
    const p = path.join(home, "bin", "nvcc");
    if (fs.existsSync(p)) return p;
  }
  return which("nvcc");
}

/** Python's site-packages folders, where PyTorch's nvidia-* wheels put cuDNN and NCCL (asked once; none without python3). */
let sitePackages;
function pythonSitePackages() {
  if (sitePackages === undefined) {
    const r = spawnSync("python3", ["-c", "import sys; print('\\n'.join(sys.path))"], { encoding: "utf8" });
    sitePackages = r.status === 0 ? r.stdout.split("\n").filter((p) => p.endsWith("-packages")) : [];
  }
  return sitePackages;
}

/**
 * cuDNN's header and library from one installation (so their versions agree): CUDNN_HOME when set;
 * otherwise the newest of the CUDA toolkit's, the system's and the nvidia-cudnn Python wheel's (the
 * one PyTorch loads). Newest, because cuDNN's attention kernels change a lot between releases: on the
 * H200, 9.19's fused attention runs the llama2-7b heads 2.2× faster than 9.14's. Null when there is
 * none; the CUDA library is then built without the cuDNN attention route.
 */
function findCudnn(cudaHome) {
  if (process.env.MHA2MLA_SKIP_CUDNN) return null;
  const sitePaths = pythonSitePackages().map((p) => path.join(p, "nvidia", "cudnn"));
  const homes = [
    { inc: path.join(cudaHome, "include"), libs: [path.join(cudaHome, "lib64")] },
    { inc: "/usr/include/x86_64-linux-gnu", libs: ["/usr/lib/x86_64-linux-gnu"] },
    { inc: "/usr/include", libs: ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"] },
    ...sitePaths.map((d) => ({ inc: path.join(d, "include"), libs: [path.join(d, "lib")] })),
  ];
  const found = (h) => {
    if (!fs.existsSync(path.join(h.inc, "cudnn.h"))) return null;
    for (const dir of h.libs) {
      const lib = ["libcudnn.so", "libcudnn.so.9"].map((f) => path.join(dir, f)).find((f) => fs.existsSync(f));
      if (lib) return { include: h.inc, lib, dir, version: cudnnVersion(h.inc) };
    }
    return null;
  };
  if (process.env.CUDNN_HOME) {
    const home = process.env.CUDNN_HOME;
    return found({ inc: path.join(home, "include"), libs: [path.join(home, "lib64"), path.join(home, "lib")] });
  }
  const all = homes.map(found).filter(Boolean);
  return all.reduce((best, c) => (best === null || c.version > best.version ? c : best), null);
}

/**
 * NCCL's library for `finetune --gpus` (opened at run time, never linked: native/cuda/nccl.cu): the
 * nvidia-nccl Python wheel's (the one PyTorch loads), else the system's; recorded in the CUDA library's
 * build record, where src/backends/native/nccl.ts looks after MHA2MLA_NCCL_LIB. Null: none here (the
 * loader's own search for libnccl.so.2 is still tried at run time).
 */
function findNccl() {
  const dirs = [...pythonSitePackages().map((p) => path.join(p, "nvidia", "nccl", "lib")), "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib"];
  return dirs.map((d) => path.join(d, "libnccl.so.2")).find((f) => fs.existsSync(f)) ?? null;
}

/** cuDNN's version as major·10000 + minor·100 + patch, from cudnn_version.h beside cudnn.h (0 if unreadable). */
function cudnnVersion(includeDir) {
  try {
    const text = fs.readFileSync(path.join(includeDir, "cudnn_version.h"), "utf8");
    const part = (name) => Number(new RegExp(`#define\\s+${name}\\s+(\\d+)`).exec(text)?.[1] ?? 0);
    return part("CUDNN_MAJOR") * 10000 + part("CUDNN_MINOR") * 100 + part("CUDNN_PATCHLEVEL");
  } catch {
    return 0;
  }
}

/**
 * A directory where `-lcudnn` finds the chosen cuDNN: its own when it has the unversioned
 * libcudnn.so; otherwise (the Python wheel ships only libcudnn.so.9, which nvcc will not take as an
 * input file) a directory under the build output holding a libcudnn.so link to it.
 */
function cudnnLinkDir(cudnn) {
  if (path.basename(cudnn.lib) === "libcudnn.so") return cudnn.dir;
  const dir = path.join(outDir, "cudnn-link");
  fs.mkdirSync(dir, { recursive: true });
  const link = path.join(dir, "libcudnn.so");
  fs.rmSync(link, { force: true });
  fs.symlinkSync(cudnn.lib, link);
  return dir;
}

async function buildCuda() {
  if (process.env.MHA2MLA_SKIP_CUDA || process.env.MHA2MLA_SKIP_NATIVE) return "mha2mla: MHA2MLA_SKIP_CUDA/MHA2MLA_SKIP_NATIVE is set: CUDA library not built";
  const nvcc = findNvcc();
  if (!nvcc) return "mha2mla: nvcc not found (CUDA_HOME, /usr/local/cuda, PATH): CUDA library not built, --device cuda is unavailable";
  const home = path.resolve(path.dirname(nvcc), "..");
  const headers = ["cublas_v2.h", "cusolverDn.h"].filter((h) => !fs.existsSync(path.join(home, "include", h)) && !fs.existsSync(path.join(home, "targets", "x86_64-linux", "include", h)));
  const out = path.join(outDir, "libmla_cuda.so");
  // MHA2MLA_NVCC_FLAGS: extra nvcc flags, e.g. -lineinfo for ncu's per-line source counters.
  const extra = (process.env.MHA2MLA_NVCC_FLAGS ?? "").split(/\s+/).filter(Boolean);
  const compile = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", include, ...extra];
  const link = ["-shared", "-Xlinker", "-z,nodelete", "-lcublas", "-lcusolver", "-ldl"];
  // The GPU of this machine when one is visible; otherwise Ampere and Hopper code plus PTX for newer GPUs.
  const hasGpu = spawnSync("nvidia-smi", ["-L"], { encoding: "utf8" }).status === 0;
  const fat = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"];
  // cuDNN's fused attention where cuDNN is installed (its frontend is vendored, header-only); the same
  // builds without it otherwise, or when that build fails.
  const cudnn = findCudnn(home);
  const cudnnCompile = cudnn ? ["-DMLA_WITH_CUDNN", "-DCUDNN_FRONTEND_SKIP_JSON_LIB", `-I${cudnn.include}`, `-I${path.join(root, "native", "third_party", "cudnn_frontend", "include")}`] : null;
  const cudnnLink = cudnn ? [`-L${cudnnLinkDir(cudnn)}`, "-lcudnn", "-Xlinker", `-rpath,${cudnn.dir}`] : null;
  // The latent kernel by roles with eight score warps (ROLES_WIDE, latent_decode_roles.cu) moves registers between its
  // warpgroups with setmaxnreg, which only an sm_90a image has: that one source is built for sm_90a where the GPU
  // is 9.0 (and beside sm_80 in the fat build, without PTX: its launcher asks whether the device has an image).
  // MHA2MLA_ROLES_WIDE=0 builds it as every other source (four score warps), for A/Bs.
  const wide = process.env.MHA2MLA_ROLES_WIDE !== "0";
  const gpuArch = hasGpu ? spawnSync("nvidia-smi", ["--query-gpu=compute_cap", "--format=csv,noheader"], { encoding: "utf8" }).stdout?.trim().split("\n")[0] : undefined;
  const sm90a = ["-gencode=arch=compute_90a,code=sm_90a", "-DROLES_WIDE=1"];
  const rolesFor = (flags) => (src) => (wide && path.basename(src) === "latent_decode_roles.cu" ? flags : undefined);
  const archs = [
    ...(hasGpu ? [{ name: "-arch=native", flags: ["-arch=native"], archFor: gpuArch === "9.0" ? rolesFor(sm90a) : undefined }] : []),
    { name: "sm_80+sm_90+PTX", flags: fat, archFor: rolesFor(["-gencode=arch=compute_80,code=sm_80", ...sm90a]) },
  ];
  const nccl = findNccl();
  const ncclRecord = nccl ? { nccl } : {};
  const cudnnRecord = cudnn ? { cudnn: { lib: cudnn.lib, version: cudnn.version }, ...ncclRecord } : {};
  const attempts = archs.map((a) => (a.archFor?.("latent_decode_roles.cu") ? { ...a, record: { rolesWide: "latent_decode_roles.cu for sm_90a, ROLES_WIDE=1" } } : a)).flatMap((a) => [
    ...(cudnn ? [{ name: `${a.name}, cuDNN`, archFlags: a.flags, archFor: a.archFor, compile: [...a.flags, ...compile, ...cudnnCompile], link: [...a.flags, ...link, ...cudnnLink], record: { ...cudnnRecord, ...a.record } }] : []),
    { name: a.name, archFlags: a.flags, archFor: a.archFor, compile: [...a.flags, ...compile], link: [...a.flags, ...link], record: { ...ncclRecord, ...a.record } },
  ]);
  const r = await buildParallel(nvcc, out, sourcesOf("cuda", ".cu"), attempts);
  const cudnnError = r.ok && cudnn && !r.variant.endsWith("cuDNN") ? Object.entries(r.errors).find(([name]) => name.endsWith("cuDNN"))?.[1] : undefined;
  if (r.ok) return `mha2mla: built the CUDA library ${path.relative(root, out)} with ${nvcc} (${r.variant}, cuBLAS, cuSOLVER${r.variant.endsWith("cuDNN") ? ` from ${cudnn.lib}` : cudnn ? `; the build with cuDNN ${cudnn.lib} failed (${cudnnError}), so without cuDNN` : "; no cuDNN found"})`;
  if (headers.length) return `mha2mla: ${nvcc} is there but ${headers.join(" and ")} ${headers.length > 1 ? "are" : "is"} not under ${home} (the cuBLAS/cuSOLVER development files of the CUDA toolkit are missing): CUDA library not built, --device cuda is unavailable`;
  return `mha2mla: building the CUDA library with ${nvcc} failed (${r.error}): --device cuda is unavailable`;
}

const only = process.argv[2];
if (only !== "cuda") console.log(buildCpu());
if (only !== "cpu") console.log(await buildCuda());
