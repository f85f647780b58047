/**
 * The CUDA backend for a GPU benchmark, and a synchronize to time against (the backend queues work on
 * its stream). Exits with the reason when there is no usable GPU.
 */
import { CudaBackend, loadCuda } from "../src/backends/native/cuda.js";

export function openCuda(): { backend: CudaBackend; sync: () => void } {
  const lib = loadCuda();
  if (typeof lib === "string") {
    console.error(`no CUDA: ${lib}`);
    process.exit(1);
  }
  const backend = new CudaBackend(lib);
  return { backend, sync: () => backend.run("synchronize", lib.fns["synchronize"]!() as number) };
}
