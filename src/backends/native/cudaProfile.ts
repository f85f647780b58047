/**
 * MHA2MLA_CUDA_PROFILE=1: every op of a CudaBackend synchronizes the GPU after it runs, and the time
 * per op (GPU work plus host dispatch) is summed and printed to stderr at exit, most expensive first.
 * For finding where a training step spends its time; it slows the run down (no overlap of host and GPU).
 * The first MHA2MLA_CUDA_PROFILE_SKIP training steps (default 2; a step ends with its optimizer
 * update) are left out: they build cuDNN graphs, choose cuBLAS algorithms and grow the memory pool.
 */
const OPS = ["linear", "linearBackward", "rmsnorm", "rmsnormBackward", "rope", "ropeBackward", "attention", "attentionForTraining", "attentionBackward", "swiglu", "swigluBackward", "add", "scale", "embedding", "embeddingBackward", "crossEntropy", "crossEntropyBackward", "crossEntropyFused", "klDivergence", "gatherCols", "scatterCols", "concatLast", "splitLast", "headLinear", "headLinearKN", "attentionDecodeBatch", "latentAttentionDecodeBatch", "scatterRows"];
const TRAINING = ["addInto", "fillZero", "sumSquares", "adamw", "cast", "copyInto"];

export function profileCuda(backend: object, training: object, synchronize: () => void): void {
  const total = new Map<string, { ms: number; calls: number }>();
  const skip = Number(process.env["MHA2MLA_CUDA_PROFILE_SKIP"] ?? 2);
  let steps = 0; // optimizer updates seen, the skipped ones included
  const wrap = (obj: Record<string, unknown>, name: string, label: string) => {
    const fn = obj[name] as ((...a: unknown[]) => unknown) | undefined;
    if (typeof fn !== "function") return;
    obj[name] = function (this: unknown, ...args: unknown[]) {
      const t0 = performance.now();
      const r = fn.apply(this, args);
      synchronize();
      const e = total.get(label) ?? { ms: 0, calls: 0 };
      e.ms += performance.now() - t0;
      e.calls++;
      total.set(label, e);
      if (label === "training.adamw" && ++steps <= skip) total.clear();
      return r;
    };
  };
  for (const op of OPS) wrap(backend as Record<string, unknown>, op, op);
  for (const op of TRAINING) wrap(training as Record<string, unknown>, op, `training.${op}`);
  process.on("exit", () => {
    const rows = [...total.entries()].sort((a, b) => b[1].ms - a[1].ms);
    const sum = rows.reduce((s, [, e]) => s + e.ms, 0);
    process.stderr.write(`CUDA profile (ms, calls, share of ${sum.toFixed(0)} ms in ops${steps > skip ? `, over ${steps - skip} training steps after the first ${skip}` : ""}):\n`);
    for (const [op, e] of rows) process.stderr.write(`  ${op.padEnd(26)} ${e.ms.toFixed(1).padStart(9)} ${String(e.calls).padStart(7)} ${((100 * e.ms) / sum).toFixed(1).padStart(5)}%\n`);
  });
}
