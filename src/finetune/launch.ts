/**
 * `finetune --gpus N`: one process per GPU, started and supervised here. Each rank is this same command
 * line run again with its place in the run in the environment (MHA2MLA_RANK, MHA2MLA_WORLD_SIZE,
 * MHA2MLA_MASTER, MHA2MLA_CUDA_DEVICE); rank 0 keeps the terminal, the others' messages come through
 * prefixed with their rank. A rank that fails stops them all (the others would wait for it forever
 * inside a collective) with an error naming it; a stop (Ctrl-C) is passed on once, and the ranks agree
 * on the step after which they stop (rank 0 saves the checkpoint). Several machines: the same command on
 * each with --nnodes, its own --node-rank and node 0's --master.
 */
import { spawn, type ChildProcess } from "node:child_process";
import readline from "node:readline";
import { MlaError } from "../errors.js";
import type { Logger } from "../util/log.js";
import { checkBatchSplits } from "./collective.js";
import { freePort, parseMaster } from "./rendezvous.js";

/** The environment a rank reads its place from (joinRun). */
export const RANK_ENV = { rank: "MHA2MLA_RANK", world: "MHA2MLA_WORLD_SIZE", master: "MHA2MLA_MASTER" } as const;

export interface LaunchOptions {
  gpus: number;
  nnodes?: number;
  nodeRank?: number;
  /** HOST:PORT of node 0, where rank 0 hands out NCCL's id (needed with nnodes > 1; one machine picks a free local port). */
  master?: string;
  /** The command each rank runs: node's execPath with these arguments (default: this process's own command line). */
  argv?: string[];
  log: Logger;
  /** Seconds the other ranks get to end on their own once rank 0 has ended (a rank blocked in a collective never does). */
  graceSeconds?: number;
}

/** Refuses a --gpus / --nnodes / --node-rank / --master combination that cannot run. */
export function checkLaunch(o: Pick<LaunchOptions, "gpus" | "nnodes" | "nodeRank" | "master">, batch: number): void {
  const whole = (v: number | undefined, min: number, flag: string) => {
    if (v !== undefined && !(Number.isInteger(v) && v >= min)) throw new MlaError("BAD_ARGUMENT", `${flag} ${v} is not a whole number ≥ ${min}`, `${flag} counts ${flag === "--gpus" ? "the GPUs of this machine to train on, one process each" : "the machines of the run"}`);
  };
  whole(o.gpus, 1, "--gpus");
  whole(o.nnodes, 1, "--nnodes");
  const nnodes = o.nnodes ?? 1;
  if (o.nnodes === undefined && (o.nodeRank ?? 0) !== 0) throw new MlaError("BAD_ARGUMENT", `--node-rank ${o.nodeRank} without --nnodes`, "pass --nnodes with the number of machines");
  if (o.nodeRank !== undefined && !(Number.isInteger(o.nodeRank) && o.nodeRank >= 0 && o.nodeRank < nnodes)) throw new MlaError("BAD_ARGUMENT", `--node-rank ${o.nodeRank} is not one of 0 … ${nnodes - 1}`, "each machine of the run takes its own --node-rank, node 0 the one --master names");
  if (nnodes > 1 && !o.master) throw new MlaError("BAD_ARGUMENT", `--nnodes ${nnodes} needs --master HOST:PORT`, "node 0's address and a free TCP port on it, the same on every node");
  if (o.master) parseMaster(o.master);
  checkBatchSplits(batch, o.gpus * nnodes);
}

interface Rank {
  rank: number;
  child: ChildProcess;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface LaunchedRun {
  /** Passes a stop on to every rank once (the ranks agree on the step after which they stop). */
  stop(): void;
  /**
   * Settles when every rank has ended: rank 0's exit code (0, or 130 for a stop) when none failed;
   * otherwise rejects with MlaError naming the first rank that failed (the others are then killed).
   */
  done: Promise<number>;
}

const howEnded = (code: number | null, signal: NodeJS.Signals | null) => (signal ? `was killed by ${signal}` : `exited with code ${code}`);

/** Starts this node's ranks (one process per GPU). */
export async function launchRanks(o: LaunchOptions): Promise<LaunchedRun> {
  const nnodes = o.nnodes ?? 1, nodeRank = o.nodeRank ?? 0, world = o.gpus * nnodes;
  const master = o.master ?? `127.0.0.1:${await freePort()}`;
  const argv = o.argv ?? [...process.execArgv, ...process.argv.slice(1)];
  const ranks: Rank[] = [];
  for (let local = 0; local < o.gpus; local++) {
    const rank = nodeRank * o.gpus + local;
    const env = { ...process.env, [RANK_ENV.rank]: String(rank), [RANK_ENV.world]: String(world), [RANK_ENV.master]: master, MHA2MLA_CUDA_DEVICE: String(local), NCCL_NVLS_ENABLE: process.env["NCCL_NVLS_ENABLE"] ?? "0" };
    // Its own process group: a terminal's Ctrl-C reaches the launcher alone, which passes one stop on.
    const child = spawn(process.execPath, argv, { env, stdio: ["ignore", rank === 0 ? "inherit" : "ignore", rank === 0 ? "inherit" : "pipe"], detached: true });
    if (child.stderr) readline.createInterface({ input: child.stderr }).on("line", (line) => process.stderr.write(`rank ${rank}: ${line}\n`));
    const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once("error", (e) => {
        process.stderr.write(`rank ${rank}: ${e.message}\n`);
        resolve({ code: 127, signal: null });
      });
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
    ranks.push({ rank, child, exit });
  }
  o.log.info(`started ${o.gpus} rank${o.gpus === 1 ? "" : "s"} of ${world} (GPU${o.gpus === 1 ? " 0" : `s 0–${o.gpus - 1}`} of this machine${nnodes > 1 ? `, node ${nodeRank} of ${nnodes}` : ""}; rendezvous at ${master})`);
  const alive = new Set(ranks);
  const killAll = () => alive.forEach((r) => r.child.kill("SIGKILL"));
  process.on("exit", killAll); // the launcher quitting at once (a second Ctrl-C) takes its ranks with it
  let stopped = false;
  const done = (async () => {
    let failure: { rank: Rank; code: number | null; signal: NodeJS.Signals | null } | null = null;
    let rank0Code: number | null = null;
    let graceTimer: NodeJS.Timeout | undefined;
    let timedOut = false;
    try {
      await new Promise<void>((allEnded) => {
        for (const r of ranks)
          void r.exit.then(({ code, signal }) => {
            alive.delete(r);
            if (r.rank === nodeRank * o.gpus) rank0Code = code; // this node's first rank (rank 0 on node 0)
            // A rank the stop reached before it could take the signal ends by it: stopped, not failed.
            const ended = code === 0 || code === 130 || (stopped && signal === "SIGINT");
            if (!ended && !failure && !timedOut) {
              // Rank 0 has finished the run (its model and files are written): a rank failing after it changes nothing.
              if (rank0Code === 0) o.log.warn(`rank ${r.rank} ${howEnded(code, signal)} after rank 0 had finished the run`);
              else {
                failure = { rank: r, code, signal };
                killAll(); // the others wait for it inside a collective: they cannot end on their own
              }
            } else if (r.rank === 0 && alive.size > 0) {
              // Rank 0 ended (or stopped): the others end after the same step, unless one waits in a collective
              // for it (rank 0 stopped inside a validation). Not the other way round: rank 0 writes the model
              // and the final checkpoint after the others are done (minutes for a 7B run).
              graceTimer = setTimeout(() => {
                timedOut = true;
                killAll();
              }, (o.graceSeconds ?? 60) * 1000);
            }
            if (alive.size === 0) allEnded();
          });
      });
    } finally {
      clearTimeout(graceTimer);
      process.off("exit", killAll);
    }
    if (failure) {
      const { rank, code, signal } = failure as { rank: Rank; code: number | null; signal: NodeJS.Signals | null };
      throw new MlaError("INTERRUPTED", `rank ${rank.rank} (GPU ${rank.rank - nodeRank * o.gpus} of this machine) ${howEnded(code, signal)}; the other ranks were stopped${rank.rank === 0 ? "" : ` (its last messages are above, prefixed "rank ${rank.rank}:")`}`, "fix what its error above says; where a checkpoint was saved, the same command with --resume continues from it");
    }
    return rank0Code ?? (stopped ? 130 : 1);
  })();
  return {
    stop: () => {
      if (stopped) return;
      stopped = true;
      for (const r of alive) r.child.kill("SIGINT");
    },
    done,
  };
}
