/**
 * A test double of the ranks of a data-parallel run inside one process: `world` Collectives whose
 * sums meet in memory (each in float64, in rank order). The trainers of the ranks run concurrently as
 * async calls; a rank waits at a sum until every rank has reached it. Host backends only: a tensor's
 * toArray() there is its live storage, which the sum is written into.
 */
import type { Collective } from "../../src/finetune/collective.js";

export function localGroup(world: number): Collective[] {
  type Round = { parts: Float64Array[]; arrived: number; done: Promise<Float64Array>; resolve: (v: Float64Array) => void };
  const rounds: Round[] = []; // one per sum in progress, in the order the ranks reach them
  const reached = new Array<number>(world).fill(0);
  const reduce = (rank: number, values: Float64Array): Promise<Float64Array> => {
    const k = reached[rank]!++;
    let r = rounds[k];
    if (!r) {
      let resolve!: (v: Float64Array) => void;
      const done = new Promise<Float64Array>((res) => (resolve = res));
      r = rounds[k] = { parts: new Array<Float64Array>(world), arrived: 0, done, resolve };
    }
    if (r.arrived > 0 && r.parts.find((p) => p)!.length !== values.length) throw new Error(`rank ${rank} summed ${values.length} values where another rank summed ${r.parts.find((p) => p)!.length}`);
    r.parts[rank] = values;
    if (++r.arrived === world) {
      const sum = new Float64Array(values.length);
      for (const p of r.parts) for (let i = 0; i < sum.length; i++) sum[i]! += p[i]!;
      r.resolve(sum);
    }
    return r.done;
  };
  return Array.from({ length: world }, (_, rank) => ({
    rank,
    world,
    async allReduceSum(t) {
      const live = t.toArray();
      const sum = await reduce(rank, Float64Array.from(live));
      live.set(sum);
      if (t.toArray()[0] !== live[0]) throw new Error("localGroup needs a host backend whose toArray() is the tensor's storage");
    },
    allReduceHost: (values) => reduce(rank, Float64Array.from(values)),
  }));
}
