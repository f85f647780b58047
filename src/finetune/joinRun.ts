/**
 * A rank's side of `finetune --gpus` (launch.ts starts it): its place in the run from the environment,
 * then NCCL's communicator: rank 0 makes the id and hands it out at the master address, the others
 * fetch it, and every rank joins on its GPU.
 */
import { MlaError } from "../errors.js";
import { CudaBackend } from "../backends/native/cuda.js";
import { ncclCollective, ncclUniqueId, openNccl } from "../backends/native/nccl.js";
import { selectBackend } from "../backends/select.js";
import type { Logger } from "../util/log.js";
import type { Collective } from "./collective.js";
import { RANK_ENV } from "./launch.js";
import { fetchId, parseMaster, serveId, type Master } from "./rendezvous.js";

export interface RankPlace {
  rank: number;
  world: number;
  master: Master;
}

/** This process's place in a run that `finetune --gpus` started; null when it was not started as a rank. */
export function rankFromEnv(env: NodeJS.ProcessEnv = process.env): RankPlace | null {
  const [rank, world, master] = [env[RANK_ENV.rank], env[RANK_ENV.world], env[RANK_ENV.master]];
  if (rank === undefined) return null;
  const [r, w] = [Number(rank), Number(world)];
  if (!(Number.isInteger(w) && w >= 1 && Number.isInteger(r) && r >= 0 && r < w) || !master)
    throw new MlaError("BAD_ARGUMENT", `${RANK_ENV.rank}=${rank} ${RANK_ENV.world}=${world ?? ""} ${RANK_ENV.master}=${master ?? ""} is not a rank of a run`, `these are set by finetune --gpus for the processes it starts; unset ${RANK_ENV.rank} to run on your own`);
  return { rank: r, world: w, master: parseMaster(master, RANK_ENV.master) };
}

/** Joins the run's NCCL communicator on this process's GPU (blocks until every rank has joined). */
export async function joinRun(place: RankPlace, log: Logger): Promise<Collective & { close(): void }> {
  let b;
  try {
    b = selectBackend("cuda");
  } catch (e) {
    throw noGpuFor(place.rank, e);
  }
  if (!(b instanceof CudaBackend)) throw new MlaError("UNSUPPORTED", "--gpus needs the CUDA backend", "use --device cuda");
  const version = openNccl(b);
  let id: Uint8Array;
  if (place.rank === 0) {
    id = ncclUniqueId(b);
    const { listening, served } = serveId(place.master, id, place.world - 1);
    await listening;
    // Joining blocks this thread until every rank has joined, so every rank must have the id first.
    await served;
  } else id = await fetchId(place.master);
  const c = ncclCollective(b, id, place.rank, place.world);
  if (place.rank === 0) log.info(`NCCL ${version}: ${place.world} rank${place.world === 1 ? "" : "s"} joined`);
  return c;
}

/**
 * The CUDA backend's refusal of this rank's device (MHA2MLA_CUDA_DEVICE, its GPU on this machine) said
 * as what it means for --gpus: a device past the visible ones is a --gpus larger than the machine's.
 */
export function noGpuFor(rank: number, e: unknown): unknown {
  const seen = e instanceof Error ? /device (\d+) does not exist \((\d+) visible\)/.exec(e.message) : null;
  if (!seen) return e;
  return new MlaError("UNSUPPORTED", `rank ${rank} has no GPU: it takes GPU ${seen[1]} of this machine, which shows ${seen[2]}`, `pass --gpus ${seen[2]} or fewer (CUDA_VISIBLE_DEVICES chooses which GPUs are seen)`);
}
