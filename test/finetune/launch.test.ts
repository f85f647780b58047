/**
 * `finetune --gpus`'s launcher and rendezvous, with stand-in ranks (small node scripts) instead of
 * trainers: a rank that fails stops the others and is named; a stop is passed on once; ranks left
 * waiting after one ended are ended; NCCL's id reaches every rank over TCP.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import { checkLaunch, launchRanks } from "../../src/finetune/launch.js";
import { fetchId, freePort, parseMaster, serveId } from "../../src/finetune/rendezvous.js";
import { noGpuFor, rankFromEnv } from "../../src/finetune/joinRun.js";
import { MlaError } from "../../src/errors.js";
import { silentLogger } from "../../src/util/log.js";
import { spawnSync } from "node:child_process";
import { FIXTURES, ROOT, tmpDir } from "../helpers.js";

const rankScript = (body: string) => ["-e", `const rank = Number(process.env.MHA2MLA_RANK); ${body}`];

test("a rank that fails stops the others, and the error names it", async () => {
  const t0 = Date.now();
  const run = await launchRanks({ gpus: 3, argv: rankScript("if (rank === 1) setTimeout(() => process.exit(3), 200); else setInterval(() => {}, 1000);"), log: silentLogger });
  await assert.rejects(run.done, (e: MlaError) => e.code === "INTERRUPTED" && /^rank 1 \(GPU 1 of this machine\) exited with code 3; the other ranks were stopped/.test(e.message));
  assert.ok(Date.now() - t0 < 10_000, "the waiting ranks were killed, not waited for");
});

test("a rank failing after rank 0 finished the run is a warning, not a failure", async () => {
  const warned: string[] = [];
  const run = await launchRanks({ gpus: 2, argv: rankScript("setTimeout(() => process.exit(rank === 0 ? 0 : 4), rank === 0 ? 10 : 800);"), log: { info: () => {}, warn: (m) => void warned.push(m) } });
  assert.equal(await run.done, 0);
  assert.deepEqual(warned, ["rank 1 exited with code 4 after rank 0 had finished the run"]);
});

test("every rank gets its place; rank 0's exit code is the run's", async () => {
  const run = await launchRanks({ gpus: 2, argv: rankScript("const ok = process.env.MHA2MLA_WORLD_SIZE === '2' && process.env.MHA2MLA_CUDA_DEVICE === String(rank) && /^127\\.0\\.0\\.1:\\d+$/.test(process.env.MHA2MLA_MASTER) && process.env.NCCL_NVLS_ENABLE === '0'; process.exit(ok ? 0 : 9);"), log: silentLogger });
  assert.equal(await run.done, 0);
});

test("a stop is passed on to every rank once; ranks that stop exit 130", async () => {
  const dir = tmpDir();
  const run = await launchRanks({ gpus: 2, argv: rankScript(`let n = 0; process.on('SIGINT', () => { if (++n > 1) process.exit(5); setTimeout(() => process.exit(130), 100); }); setInterval(() => {}, 1000); require('fs').writeFileSync(${JSON.stringify(dir)} + '/ready-' + rank, '');`), log: silentLogger });
  while (!(fs.existsSync(path.join(dir, "ready-0")) && fs.existsSync(path.join(dir, "ready-1")))) await new Promise((r) => setTimeout(r, 20));
  run.stop();
  run.stop(); // a second request does not signal again
  assert.equal(await run.done, 130);
});

test("a rank the stop reaches before it takes signals counts as stopped", async () => {
  const run = await launchRanks({ gpus: 2, argv: rankScript("setInterval(() => {}, 1000);"), log: silentLogger });
  await new Promise((r) => setTimeout(r, 300));
  run.stop();
  assert.equal(await run.done, 130);
});

test("ranks still running a grace period after rank 0 ended are ended; rank 0 is waited for, however long it writes", async () => {
  const run = await launchRanks({ gpus: 2, graceSeconds: 0.5, argv: rankScript("if (rank === 0) process.exit(0); setInterval(() => {}, 1000);"), log: silentLogger });
  assert.equal(await run.done, 0);
  // Rank 0 writes the model and the final checkpoint after the others have ended.
  const writing = await launchRanks({ gpus: 2, graceSeconds: 0.2, argv: rankScript("setTimeout(() => process.exit(0), rank === 0 ? 1500 : 10);"), log: silentLogger });
  assert.equal(await writing.done, 0);
});

test("--gpus, --nnodes, --node-rank and --master are checked before anything starts", () => {
  const refused = (o: Parameters<typeof checkLaunch>[0], batch: number, re: RegExp) => assert.throws(() => checkLaunch(o, batch), (e: MlaError) => e.code === "BAD_ARGUMENT" && re.test(e.message));
  refused({ gpus: 0 }, 16, /--gpus 0 is not a whole number ≥ 1/);
  refused({ gpus: 2, nnodes: 2 }, 16, /--nnodes 2 needs --master HOST:PORT/);
  refused({ gpus: 2, nnodes: 2, nodeRank: 2, master: "h:1" }, 16, /--node-rank 2 is not one of 0 … 1/);
  refused({ gpus: 2, nodeRank: 1 }, 16, /--node-rank 1 without --nnodes/);
  refused({ gpus: 3, nnodes: 2, master: "h:1" }, 16, /--batch 16 does not split over 6 GPUs/);
  refused({ gpus: 2, master: "nowhere" }, 16, /--master nowhere is not HOST:PORT/);
  checkLaunch({ gpus: 4, nnodes: 2, nodeRank: 1, master: "10.0.0.1:29500" }, 16);
  assert.deepEqual(parseMaster("[::1]:29500"), { host: "::1", port: 29500 });
});

test("rank 0 hands NCCL's id to every other rank; a rank started first waits for it", async () => {
  const master = { host: "127.0.0.1", port: await freePort() };
  const id = Uint8Array.from({ length: 128 }, (_, i) => (i * 7) % 256);
  const early = fetchId(master, 10_000); // before rank 0 listens
  await new Promise((r) => setTimeout(r, 300));
  const { listening, served } = serveId(master, id, 2);
  await listening;
  const got = await Promise.all([early, fetchId(master, 10_000)]);
  await served;
  for (const g of got) assert.deepEqual([...g], [...id]);
});

test("the rendezvous names a busy port, and a rank 0 that never answers", async () => {
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, "127.0.0.1", r));
  const port = (busy.address() as net.AddressInfo).port;
  const { listening } = serveId({ host: "127.0.0.1", port }, new Uint8Array(128), 1);
  await assert.rejects(listening, (e: MlaError) => e.code === "IO" && /cannot listen at 127\.0\.0\.1:\d+: EADDRINUSE/.test(e.message));
  busy.close();
  await assert.rejects(fetchId({ host: "127.0.0.1", port: await freePort() }, 500), (e: MlaError) => e.code === "IO" && /no rank 0 answered at 127\.0\.0\.1:\d+ in 0\.5 s/.test(e.message));
});

test("a rank reads its place from the environment, and refuses a broken one", () => {
  assert.equal(rankFromEnv({}), null);
  assert.deepEqual(rankFromEnv({ MHA2MLA_RANK: "1", MHA2MLA_WORLD_SIZE: "2", MHA2MLA_MASTER: "127.0.0.1:5" }), { rank: 1, world: 2, master: { host: "127.0.0.1", port: 5 } });
  assert.throws(() => rankFromEnv({ MHA2MLA_RANK: "2", MHA2MLA_WORLD_SIZE: "2", MHA2MLA_MASTER: "h:5" }), (e: MlaError) => e.code === "BAD_ARGUMENT" && /is not a rank of a run/.test(e.message));
});

test("finetune --gpus from the command line: a CPU device, or --nnodes without --gpus, is refused before any rank starts", () => {
  const out = path.join(tmpDir(), "ft");
  const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, "dist/src/cli/main.js"), "finetune", "stories260K", "--data", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--out", out, ...args], { encoding: "utf8" });
  const cpu = cli("--gpus", "2", "--device", "cpu");
  assert.equal(cpu.status, 1);
  assert.match(cpu.stderr, /^error: --gpus runs one process per GPU; --device cpu has none\n {2}hint: drop --device, or pass --device cuda/m);
  const nodes = cli("--nnodes", "2");
  assert.equal(nodes.status, 1);
  assert.match(nodes.stderr, /error: --nnodes without --gpus/);
  // A CUDA library that cannot load (here a named file that is not there; on CI the built one is missing):
  // said once by the launcher, not by every rank after it started them.
  const missing = path.join(tmpDir(), "libmla_cuda.so");
  const nolib = spawnSync(process.execPath, [path.join(ROOT, "dist/src/cli/main.js"), "finetune", "stories260K", "--data", path.join(FIXTURES, "text", "tinystories_25k.txt"), "--out", out, "--gpus", "2"], { encoding: "utf8", env: { ...process.env, MHA2MLA_CUDA_LIB: missing } });
  assert.equal(nolib.status, 1);
  assert.match(nolib.stderr, /^error: MHA2MLA_CUDA_LIB=.*libmla_cuda\.so: no such file\n {2}hint: point MHA2MLA_CUDA_LIB at a library/m);
  assert.doesNotMatch(cpu.stderr + nodes.stderr + nolib.stderr, /started \d+ rank|^rank \d+:/m);
  assert.equal(fs.existsSync(out), false);
});

test("a rank whose GPU the machine does not have is told to pass fewer --gpus", () => {
  // The CUDA backend's words for it (an H100 machine, finetune --gpus 2: docs/device-logs/multi-gpu-one-rank-s42-h100.txt).
  const e = noGpuFor(1, new MlaError("UNSUPPORTED", "--device cuda: /x/libmla_cuda.so: device 1 does not exist (1 visible)", "use --device cpu")) as MlaError;
  assert.match(e.message, /^rank 1 has no GPU: it takes GPU 1 of this machine, which shows 1\n {2}hint: pass --gpus 1 or fewer/);
  const other = new Error("something else");
  assert.equal(noGpuFor(0, other), other);
});
