"""torch.bmm at the shapes of bench/head-linear.ts (the per-head products of MLA's run-time absorption):
y[t, h] = W[g(h)] · x[t, h], bf16 inputs and weights, as one batched product over the G groups.
Usage: python3 bench/head_linear_torch.py [--shapes T:H:G:K:N,...] [--reps 50]"""
import argparse
import torch
from hbm import hbm_bound

DEFAULT = "1:32:32:112:2048,8:32:32:112:2048,32:32:32:112:2048,1:32:32:2048:128,8:32:32:2048:128,32:32:32:2048:128"
p = argparse.ArgumentParser()
p.add_argument("--shapes", default=DEFAULT)
p.add_argument("--reps", type=int, default=50)
a = p.parse_args()
HBM, HBM_LABEL = hbm_bound(torch.cuda.get_device_name())
print(f"| T | H | G | K | N | torch.bmm µs per call (torch {torch.__version__}) | % of HBM bound (weights; {HBM_LABEL}) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for s in a.shapes.split(","):
    T, H, G, K, N = map(int, s.split(":"))
    x = torch.randn(T, H, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(G, N, K, device="cuda", dtype=torch.bfloat16)
    q = H // G

    def call():
        xs = x.view(T, G, q, K).permute(1, 0, 2, 3).reshape(G, T * q, K)
        return torch.bmm(xs, w.transpose(1, 2)).view(G, T, q, N).permute(1, 0, 2, 3).reshape(T, H, N)

    for _ in range(5):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(a.reps):
        call()
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) / a.reps * 1000
    bound = G * N * K * 2 / HBM
    print(f"| {T} | {H} | {G} | {K} | {N} | {us:.1f} | {100 * bound * 1e6 / us:.0f}% |")
