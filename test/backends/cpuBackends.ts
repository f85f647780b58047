/**
 * The CPU backends the op tests run on (TypeScript reference in float32 and float64, the native CPU
 * library), each with the tolerance its arithmetic allows; the native one is skipped, saying why,
 * where its library did not load.
 */
import { loadNativeCpu, NativeCpuBackend } from "../../src/backends/native/cpu.js";
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import type { Backend } from "../../src/tensor/backend.js";

export interface CpuBackendCase {
  name: string;
  make: () => Backend;
  tol: number;
  /** Why it cannot run here (node:test's skip), or false. */
  skip: string | false;
}

export function cpuBackends(tol: { f32: number; f64: number; native: number }): CpuBackendCase[] {
  const lib = loadNativeCpu();
  return [
    { name: "reference f32", make: () => new ReferenceBackend("f32"), tol: tol.f32, skip: false },
    { name: "reference f64", make: () => new ReferenceBackend("f64"), tol: tol.f64, skip: false },
    { name: "native CPU", make: () => new NativeCpuBackend(lib as Exclude<typeof lib, string>), tol: tol.native, skip: typeof lib === "string" ? `native CPU library not loaded: ${lib}` : false },
  ];
}
