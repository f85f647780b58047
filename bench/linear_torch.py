"""The peer of bench/linear-gpu.ts: F.linear under bf16 autocast (float32 x and weight master,
as a PyTorch mixed-precision trainer runs it), forward and backward (dx, dw), ms per call.
--decode: the forward only on bf16 x and w (as HF decodes), over enough copies of w (≥ 256 MiB, used
in turn) that L2 cannot serve them, with the weight-read rate in TB/s, as linear-gpu.ts --decode does."""
import argparse, json, time
import torch

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="16384:576:576,16384:576:1536,16384:1536:576,16384:576:32,16384:32:168,16384:32:192,16384:576:24")
p.add_argument("--decode", action="store_true")
a = p.parse_args()
for s in a.shapes.split(","):
    M, K, N = map(int, s.split(":"))
    if a.decode:
        copies = min(64, max(1, -(-(256 << 20) // (N * K * 2))))
        xb = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        reps = max(50, 2 * copies)
        with torch.no_grad():
            torch.nn.functional.linear(xb, ws[0])
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for r in range(reps):
                torch.nn.functional.linear(xb, ws[r % copies])
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000 / reps
        print(json.dumps({"tool": "torch", "pass": "forward", "M": M, "K": K, "N": N, "ms": round(ms, 4), "tflops": round(2 * M * K * N / ms / 1e9, 1), "weight_tb_per_s": round(N * K * 2 / ms / 1e9, 2), "copies": copies}))
        del ws
        continue
    x = torch.randn(M, K, device="cuda", requires_grad=True)
    w = torch.randn(N, K, device="cuda", requires_grad=True)
    dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)

    def timed(pass_, flops, fn, reps=50):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000 / reps
        print(json.dumps({"tool": "torch", "pass": pass_, "M": M, "K": K, "N": N, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}))

    def fwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return torch.nn.functional.linear(x, w)

    def fwd_bwd():
        y = fwd()
        torch.autograd.grad(y, (x, w), dy)

    timed("forward", 2 * M * K * N, fwd)
    timed("forward+backward", 6 * M * K * N, fwd_bwd)
