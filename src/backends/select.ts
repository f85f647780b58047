/** `--device`: which backend runs the ops. Only the reference backend exists so far. */
import { MlaError } from "../errors.js";
import type { Backend } from "../tensor/backend.js";
import type { Logger } from "../util/log.js";
import { referenceBackend } from "./reference/index.js";

export const DEVICE_NAMES = ["auto", "reference", "cpu", "cuda"] as const;
export type DeviceName = (typeof DEVICE_NAMES)[number];

export function selectBackend(device: DeviceName, _log: Logger): Backend {
  if (device === "auto" || device === "reference") return referenceBackend;
  throw new MlaError("UNSUPPORTED", `--device ${device}: the native ${device} backend is not built in this version`, "use --device auto or reference (the TypeScript backend)");
}
