/**
 * The environment switches of the CUDA backend that pick a route or a tuning value, with the values
 * each takes. The native library reads them (some at every call, some once per process) and treats a
 * value it does not know as unset, so a misspelt route or an out-of-range number would silently run the
 * default: the backend checks them all when it starts (checkCudaEnv) and refuses such a value, naming
 * it and what is accepted. Unset and empty mean the default everywhere.
 */
import { MlaError } from "../../errors.js";

/** The values MHA2MLA_CUDA_ATTENTION takes (native/cuda/context.cu reads it at every call; "default" = unset). */
export const CUDA_ATTENTION_ROUTES = ["default", "cudnn", "fused", "gemm", "flash", "rows"] as const;

interface Switch {
  name: string;
  /** What a value selects, for the message ("an attention route"). */
  what: string;
  /** The accepted words, or an inclusive integer range. */
  accepts: readonly string[] | { min: number; max: number };
  /** Read at each call of an op a decode step records (so a recorded step must follow a change). */
  perCall?: true;
}

export const CUDA_SWITCHES: readonly Switch[] = [
  // Read as a number when the library starts: "x" would be NaN, which the binding passes on as GPU 0.
  { name: "MHA2MLA_CUDA_DEVICE", what: "a GPU index", accepts: { min: 0, max: 1023 } },
  { name: "MHA2MLA_CUDA_ATTENTION", what: "an attention route", accepts: CUDA_ATTENTION_ROUTES },
  { name: "MHA2MLA_MHA_DECODE", what: "an MHA decode route", accepts: ["kernel", "cublas"], perCall: true },
  { name: "MHA2MLA_LATENT_DECODE", what: "a latent decode route (the fused kernel is the default)", accepts: ["gemm"], perCall: true },
  { name: "MHA2MLA_LATENT_KERNEL", what: "a latent decode kernel (warps by role is the default where it takes the shape)", accepts: ["roles", "tiles"], perCall: true },
  { name: "MHA2MLA_LATENT_MULTICAST", what: "a switch for the latent kernel's multicast copies (0: each head block copies every row)", accepts: ["0", "1"], perCall: true },
  { name: "MHA2MLA_LATENT_Q8", what: "a switch for the int8 latent kernel (0: int8 caches are dequantized for the bf16 kernels)", accepts: ["0", "1"], perCall: true },
  { name: "MHA2MLA_LATENT_Q8_STAGES", what: "a count of the int8 latent kernel's shared-memory stages", accepts: { min: 2, max: 6 } },
  { name: "MHA2MLA_LATENT_COPY", what: "a copy mode for the tile-loop latent kernel's stages", accepts: ["bulk", "early", "barrier", "async"] },
  { name: "MHA2MLA_DECODE_BATCH", what: "a batched decode mode (one call per layer is the default)", accepts: ["rows"], perCall: true },
  { name: "MHA2MLA_DECODE_GRAPHS", what: "a decode recording switch", accepts: ["0", "1"] },
  { name: "MHA2MLA_DECODE_TF32", what: "a TF32 switch for decode's attention GEMMs", accepts: ["0", "1"] },
  { name: "MHA2MLA_CUDNN_DETERMINISTIC", what: "a cuDNN determinism switch", accepts: ["0", "1"] },
  { name: "MHA2MLA_CUDNN_TRACE", what: "a cuDNN trace switch", accepts: ["0", "1"] },
  // Any non-empty value turns profiling on (cuda.ts), "0" included: refuse it rather than profile.
  { name: "MHA2MLA_CUDA_PROFILE", what: "a profiling switch", accepts: ["1"] },
  { name: "MHA2MLA_CUDA_PROFILE_SKIP", what: "a count of training steps", accepts: { min: 0, max: 1_000_000 } },
  { name: "MHA2MLA_HEAD_KN_ROWS", what: "a row limit for the per-head key up-projection kernel (above it, cuBLAS)", accepts: { min: 0, max: 8 }, perCall: true },
  { name: "MHA2MLA_GEMV_ROWS", what: "a row limit for the decode products' kernels", accepts: { min: 0, max: 32 }, perCall: true },
  { name: "MHA2MLA_GEMV_MMA_ROWS", what: "a row count from which the decode products take the tensor-core kernel (33: never)", accepts: { min: 1, max: 33 }, perCall: true },
  { name: "MHA2MLA_DECODE_BF16_INPUTS", what: "a switch for decode steps' bf16 product inputs (0: each product rounds its own)", accepts: ["0", "1"], perCall: true },
  { name: "MHA2MLA_LINEAR_MANY", what: "a switch for one launch of a decode layer's projections (0: one linear each)", accepts: ["0", "1"], perCall: true },
  { name: "MHA2MLA_DECODE_MIN_TILES", what: "a minimum of tiles per context split", accepts: { min: 1, max: 64 } },
  { name: "MHA2MLA_CUDA_ATTENTION_CHUNK", what: "a count of queries per GEMM chunk", accepts: { min: 1, max: 1 << 20 } },
];

function accepted(s: Switch, value: string): boolean {
  if (Array.isArray(s.accepts)) return (s.accepts as readonly string[]).includes(value);
  const { min, max } = s.accepts as { min: number; max: number };
  return /^\d+$/.test(value) && Number(value) >= min && Number(value) <= max;
}

function expected(s: Switch): string {
  if (Array.isArray(s.accepts)) return `use ${s.accepts.length === 1 ? "" : "one of "}${s.accepts.join(", ")}, or unset it`;
  const { min, max } = s.accepts as { min: number; max: number };
  return `use a whole number from ${min} to ${max}, or unset it`;
}

/** Refuses the first switch in `env` whose value its reader would not take (see the file comment). */
export function checkCudaEnv(env: Readonly<Record<string, string | undefined>> = process.env): void {
  for (const s of CUDA_SWITCHES) {
    const value = env[s.name];
    if (value === undefined || value === "" || accepted(s, value)) continue;
    throw new MlaError("BAD_ARGUMENT", `${s.name}=${value} is not ${s.what}`, expected(s));
  }
}

/**
 * The per-call switches' values as one string (see Backend.routes), checked when it differs from the
 * last one checked: a route set mid-process is refused as one set at start-up is. Only the per-call
 * ones: a decode step calls this, and each process.env read costs about a microsecond.
 */
const PER_CALL = CUDA_SWITCHES.filter((s) => s.perCall).map((s) => s.name);
let lastRoutes: string | undefined;
export function cudaRoutes(env: Readonly<Record<string, string | undefined>> = process.env): string {
  const key = PER_CALL.map((name) => env[name] ?? "").join(";");
  if (key !== lastRoutes) {
    checkCudaEnv(env);
    lastRoutes = key;
  }
  return key;
}
