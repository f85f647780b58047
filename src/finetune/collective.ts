/**
 * Data-parallel training's communication: the ranks of one run (one process per GPU) sum their
 * gradients, losses and stop requests. The production implementation is NCCL's (ncclCollective,
 * src/backends/native/nccl.ts); the trainer sees only this interface, so an in-process group of
 * ranks (tests) exercises the same code path on the CPU.
 */
import { MlaError } from "../errors.js";
import type { Tensor } from "../tensor/tensor.js";

export interface Collective {
  /** This process's rank, 0 … world − 1; rank 0 writes the run's files. */
  readonly rank: number;
  readonly world: number;
  /** t ← the sum of every rank's t, in place (every rank passes a tensor of the same size and dtype). */
  allReduceSum(t: Tensor): Promise<void>;
  /** The sums over ranks of a few host numbers (every rank passes as many). */
  allReduceHost(values: Float64Array): Promise<Float64Array>;
}

/** Refuses a --batch (the sequences of a micro-batch over all ranks) that the `world` ranks cannot share evenly. */
export function checkBatchSplits(batch: number, world: number): void {
  if (batch % world !== 0) throw new MlaError("BAD_ARGUMENT", `--batch ${batch} does not split over ${world} GPUs`, `--batch is the sequences of a micro-batch over all GPUs: use a multiple of ${world} (--accum adds micro-batches to a step)`);
}

/** Waits until every rank has reached it. */
export async function barrier(c: Collective): Promise<void> {
  await c.allReduceHost(new Float64Array(1));
}

/**
 * Rows [rank·B/W, (rank + 1)·B/W) of a micro-batch of B sequences of T inputs each ([B·T] inputs and
 * targets): the part one rank of W trains on. B must be a multiple of W (checked by the caller).
 */
export function rankRows<M extends { inputs: Int32Array; targets: Int32Array; sequences: number }>(mb: M, rank: number, world: number): M {
  if (world === 1) return mb;
  const per = mb.sequences / world;
  const T = mb.inputs.length / mb.sequences;
  const [a, b] = [rank * per * T, (rank + 1) * per * T];
  return { ...mb, inputs: mb.inputs.subarray(a, b), targets: mb.targets.subarray(a, b), sequences: per };
}

/**
 * Rank `rank`'s share of a text scored in windows of `stride` tokens (perplexity's: each window scores
 * the next `stride` tokens): a run of whole windows, the ranks' runs in order covering the text, so their
 * token NLL sums add up to the whole text's. Empty for a rank left without a window.
 */
export function rankWindows(ids: Int32Array, stride: number, rank: number, world: number): Int32Array {
  const windows = Math.ceil(ids.length / stride);
  const [a, b] = [Math.floor((rank * windows) / world), Math.floor(((rank + 1) * windows) / world)];
  return ids.subarray(Math.min(ids.length, a * stride), Math.min(ids.length, b * stride));
}
