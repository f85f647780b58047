/**
 * NCCL on the CUDA backend (native/cuda/nccl.cu): the library is opened at run time, so a machine
 * without it builds and runs everything but `finetune --gpus`. Where it is looked for, in order:
 * MHA2MLA_NCCL_LIB (a file; only it, when set), the path the build found (the nvidia-nccl Python
 * wheel PyTorch ships, recorded in the CUDA library's build record), then `libnccl.so.2` on the
 * loader's path.
 */
import fs from "node:fs";
import { MlaError } from "../../errors.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { Collective } from "../../finetune/collective.js";
import type { CudaBackend } from "./cuda.js";

/** The NCCL file the build recorded beside the CUDA library (null: none found then, or no record). */
function recordedNccl(libPath: string): string | null {
  try {
    const rec = JSON.parse(fs.readFileSync(`${libPath}.json`, "utf8")) as { nccl?: unknown };
    return typeof rec.nccl === "string" ? rec.nccl : null;
  } catch {
    return null;
  }
}

/** Opens NCCL (once per process) and returns its version as "2.27.3". */
export function openNccl(b: CudaBackend): string {
  const fns = b.lib.fns;
  const env = process.env["MHA2MLA_NCCL_LIB"];
  const candidates = env ? [env] : [recordedNccl(b.lib.path), "libnccl.so.2"].filter((c): c is string => !!c);
  const version = new Int32Array(1);
  const why: string[] = [];
  for (const c of candidates) {
    if (fns["ncclLoad"]!(c, version) === 0) {
      const v = version[0]!;
      return `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`;
    }
    why.push(b.lib.lastError().replace(/^[^ ]+: /, ""));
  }
  throw new MlaError(
    "UNSUPPORTED",
    `--gpus needs NCCL, and it did not load: ${why.join("; ")}`,
    env ? "MHA2MLA_NCCL_LIB must name NCCL 2.x's libnccl.so.2" : "install NCCL (the nvidia-nccl-cu12/cu13 Python wheel, or the libnccl2 package), or set MHA2MLA_NCCL_LIB to its libnccl.so.2",
  );
}

/** A new NCCL unique id (128 bytes), made by rank 0 and handed to every rank. */
export function ncclUniqueId(b: CudaBackend): Uint8Array {
  const id = new Uint8Array(128);
  b.run("nccl_unique_id", b.lib.fns["ncclUniqueId"]!(id));
  return id;
}

/**
 * Joins the communicator of `world` ranks with `id` as `rank` (blocks until every rank has joined)
 * and returns it as a Collective: the sums run on the backend's stream, in place.
 */
export function ncclCollective(b: CudaBackend, id: Uint8Array, rank: number, world: number): Collective & { close(): void } {
  const fns = b.lib.fns;
  b.run("nccl_init", b.blocking(() => fns["ncclInit"]!(id, world, rank)));
  return {
    rank,
    world,
    allReduceSum: async (t: Tensor) => b.run("nccl_all_reduce_sum", fns["ncclAllReduceSum"]!(b.handle(t))),
    allReduceHost: async (values: Float64Array) => {
      const v = Float64Array.from(values);
      b.run("nccl_all_reduce_host", b.blocking(() => fns["ncclAllReduceHost"]!(v, v.length)));
      return v;
    },
    close: () => b.run("nccl_destroy", fns["ncclDestroy"]!()),
  };
}
