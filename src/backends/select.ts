/**
 * `--device`: which backend runs the ops. auto = CUDA when its library loads and a GPU is visible,
 * then the native CPU library, then the TypeScript reference backend; says once which it picked and
 * why the ones before were passed over. The conversion's float64 linear algebra follows the device.
 */
import { MlaError } from "../errors.js";
import type { Backend } from "../tensor/backend.js";
import { silentLogger, type Logger } from "../util/log.js";
import { describe } from "../util/optionTypes.js";
import { referenceBackend } from "./reference/index.js";
import { loadNativeCpu, nativeLinalg, NativeCpuBackend } from "./native/cpu.js";
import { CudaBackend, cudaLinalg, loadCuda } from "./native/cuda.js";
import { type Linalg } from "./native/linalg.js";

export const DEVICE_NAMES = ["auto", "reference", "cpu", "cuda"] as const;
export type DeviceName = (typeof DEVICE_NAMES)[number];

let cpu: NativeCpuBackend | null = null;
let cuda: CudaBackend | null = null;
/** Per logger, so a script's call with a logger hears the device even after a quiet call picked it. */
const announced = new WeakMap<Logger, Set<string>>();

function announce(log: Logger, line: string): void {
  const said = announced.get(log) ?? new Set<string>();
  announced.set(log, said);
  if (said.has(line)) return;
  said.add(line);
  log.info(line);
}

/** CUDA when requested or (auto) available; null when auto and unavailable. */
function tryCuda(device: DeviceName, log: Logger): CudaBackend | null {
  if (device !== "auto" && device !== "cuda") return null;
  if (device === "auto" && process.env["MHA2MLA_NO_CUDA"]) return null;
  const lib = loadCuda();
  if (typeof lib === "string") {
    if (device === "cuda") throw new MlaError("UNSUPPORTED", `--device cuda: ${lib}`, "use --device cpu, or build the CUDA library with `npm run build:native` on a machine with nvcc and a GPU");
    return null;
  }
  cuda ??= new CudaBackend(lib);
  announce(log, `device: CUDA (${cuda.info})`);
  return cuda;
}

/**
 * Refuses a device name outside DEVICE_NAMES (a script's typo would otherwise run on whatever auto
 * finds). Entries whose backend is selected only where one runs (a conversion's calibration or
 * evaluation) call it before any work, or a dry run would take the typo without a word.
 */
export function checkDevice(device: unknown): asserts device is DeviceName {
  if (!(DEVICE_NAMES as readonly unknown[]).includes(device)) throw new MlaError("BAD_ARGUMENT", `--device ${String(device)} is not known`, `use one of ${DEVICE_NAMES.join(", ")}`);
}

/** The backend `device` names (see the file's header); `log` hears which one auto picked and why. */
export function selectBackend(device: DeviceName, log: Logger = silentLogger): Backend {
  // From a script: no name read as "--device undefined is not known", an options object as "[object Object]".
  if (typeof device !== "string") throw new MlaError("BAD_ARGUMENT", `selectBackend(): the device is ${describe(device)}, not a device name`, `pass one of ${DEVICE_NAMES.join(", ")}, e.g. selectBackend("auto")`);
  checkDevice(device);
  if (device === "reference") return referenceBackend;
  const gpu = tryCuda(device, log);
  if (gpu) return gpu;
  const lib = loadNativeCpu();
  if (typeof lib === "string") {
    if (device === "cpu") throw new MlaError("UNSUPPORTED", `--device cpu: the native CPU library is not available: ${lib}`, "install a C++ compiler (g++) and run `npm run build:native`, or use --device reference");
    announce(log, `device: reference (TypeScript) backend; native CPU library unavailable: ${lib}`);
    return referenceBackend;
  }
  cpu ??= new NativeCpuBackend(lib);
  announce(log, `device: native CPU backend (${cpu.info})`);
  return cpu;
}

/** The float64 linear-algebra route for `device` (null: TypeScript/ml-matrix). */
export function selectLinalg(device: DeviceName, log: Logger): Linalg | null {
  checkDevice(device);
  if (device === "reference") return null;
  const gpu = tryCuda(device, log);
  if (gpu) return cudaLinalg(gpu.lib);
  if (device === "cpu" && typeof loadNativeCpu() === "string") selectBackend("cpu", log); // throws the clear error
  return process.env["MHA2MLA_SKIP_NATIVE_LINALG"] ? null : nativeLinalg();
}
