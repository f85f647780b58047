/**
 * `--device`: which backend runs the ops. auto = CUDA (not built yet), then the native CPU library,
 * then the TypeScript reference backend, and says which it picked.
 */
import { MlaError } from "../errors.js";
import type { Backend } from "../tensor/backend.js";
import type { Logger } from "../util/log.js";
import { referenceBackend } from "./reference/index.js";
import { loadNativeCpu, NativeCpuBackend } from "./native/cpu.js";

export const DEVICE_NAMES = ["auto", "reference", "cpu", "cuda"] as const;
export type DeviceName = (typeof DEVICE_NAMES)[number];

let cpu: NativeCpuBackend | null = null;
let announced = false;

export function selectBackend(device: DeviceName, log: Logger): Backend {
  if (device === "reference") return referenceBackend;
  if (device === "cuda") throw new MlaError("UNSUPPORTED", "--device cuda: the CUDA backend is not built in this version", "use --device cpu (native CPU) or reference");
  const lib = loadNativeCpu();
  if (typeof lib === "string") {
    if (device === "cpu") throw new MlaError("UNSUPPORTED", `--device cpu: the native CPU library is not available: ${lib}`, "install a C++ compiler (g++) and run `npm run build:native`, or use --device reference");
    if (!announced) log.info(`device: reference (TypeScript) backend; native CPU library unavailable: ${lib}`);
    announced = true;
    return referenceBackend;
  }
  cpu ??= new NativeCpuBackend(lib);
  if (!announced) log.info(`device: native CPU backend (${cpu.info})`);
  announced = true;
  return cpu;
}
