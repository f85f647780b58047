/**
 * Training attention on the GPU: forward and forward + backward of causal batched attention with bf16
 * inputs, on our bf16 routes (cuDNN's fused attention, the default where the build has it; our
 * fused tensor-core kernels, MHA2MLA_CUDA_ATTENTION=fused; the chunked cuBLAS GEMMs,
 * MHA2MLA_CUDA_ATTENTION=gemm), as the trainer calls them (float32 tensors in and out; the training
 * forward keeps the fused kernels' softmax statistics for the backward).
 * One JSON line per (shape, route, pass): milliseconds per call and effective TFLOP/s, counting the
 * causal half (forward 4·B·T²/2·H·Dh, backward 2.5× that). bench/attention_train_torch.py is the peer.
 * Run: node dist/bench/attention-train.js [--shapes B:T:H:Hkv:Dh,…] [--routes fused,cudnn,gemm] [--label NAME] [--kept]
 * (--label tags each line, e.g. with the build variant of bench/attention-variants.sh. --kept times
 * the calls as a training step makes them, inside a bf16Inputs arena: q, k, v are rounded once, on the
 * warm-up call, and their bf16 copies read from then on; o comes back with its bf16 copy; so only o's
 * widening, dout's rounding and the gradients' widening remain around the kernels.)
 */
import { openCuda } from "./cudaBench.js";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : fallback);
const routes = flag("--routes", "fused,gemm").split(",");
const kept = args.includes("--kept");
const label = flag("--label", "") || (kept ? "kept" : "");
const shapes = flag("--shapes", "8:1024:9:3:64,8:2048:32:32:64,4:2048:32:32:128,1:8192:32:32:128").split(",").map((s) => s.split(":").map(Number) as [number, number, number, number, number]);
const { backend, sync } = openCuda();
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
for (const [nb, T, H, Hkv, Dh] of shapes) {
  const q = backend.upload(rand(nb * T * H * Dh), [nb * T, H, Dh]);
  const k = backend.upload(rand(nb * T * Hkv * Dh), [nb * T, Hkv, Dh]);
  const v = backend.upload(rand(nb * T * Hkv * Dh), [nb * T, Hkv, Dh]);
  const d = backend.upload(rand(nb * T * H * Dh), [nb * T, H, Dh]);
  const opts = { scale: 1 / Math.sqrt(Dh), queryOffset: 0, window: null, batch: nb, bf16: true };
  const fwdFlops = 4 * nb * ((T * T) / 2) * H * Dh;
  for (const route of routes) {
    if (route === "cudnn" && !backend.cudnnVersion()) {
      console.log(JSON.stringify({ tool: "mha2mla", route, skipped: "this build has no cuDNN route" }));
      continue;
    }
    process.env["MHA2MLA_CUDA_ATTENTION"] = route;
    const time = (pass: string, reps: number, step: () => { dispose(): void }[]) => {
      for (const x of step()) x.dispose(); // warm-up
      sync();
      const t0 = performance.now();
      for (let r = 0; r < reps; r++) for (const x of step()) x.dispose();
      sync();
      const ms = (performance.now() - t0) / reps;
      const flops = pass === "forward" ? fwdFlops : 3.5 * fwdFlops;
      console.log(JSON.stringify({ tool: "mha2mla", ...(label ? { label } : {}), route, pass, B: nb, T, H, Hkv, Dh, ms: +ms.toFixed(3), tflops: +(flops / ms / 1e9).toFixed(1) }));
    };
    const passes = () => {
      time("forward", 10, () => [backend.attention(q, k, v, opts)]);
      // As the trainer runs it: the training forward keeps the softmax statistics for the backward.
      time("forward+backward", 10, () => {
        const { o, saved } = backend.attentionForTraining(q, k, v, opts);
        const g = backend.attentionBackward(q, k, v, d, opts, saved ?? undefined);
        return [o, g.dq, g.dk, g.dv, ...(saved ? [saved.lse] : [])];
      });
    };
    if (kept) backend.arena(passes, { bf16Inputs: true });
    else passes();
    delete process.env["MHA2MLA_CUDA_ATTENTION"];
  }
  for (const x of [q, k, v, d]) x.dispose();
}
