/** The --device option shared by every command that computes. */
import { DEVICE_NAMES, type DeviceName } from "../backends/select.js";

export const DEVICE_OPTION = {
  choices: DEVICE_NAMES,
  default: "auto" as DeviceName,
  describe: "compute backend: auto = CUDA when its library is built and a GPU is visible, else the native CPU library, else the TypeScript reference",
} as const;
