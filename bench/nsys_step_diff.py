"""Per-step kernel times of a recorded decode step, at the GPU's own clocks: two nsys runs of
bench/decode.js that differ only in their step count, summed per kernel name by `nsys stats --report
cuda_gpu_kern_sum`; (long − short) / extra steps is what one step launches, prefill and warm-up
cancelled. ncu (bench/ncu-decode-step.sh) serializes kernels, locks clocks and replays every prefill
kernel too, which at 16k × 8 takes longer than a device call.

Usage: python3 bench/nsys_step_diff.py SHORT.csv LONG.csv EXTRA_STEPS [TOP]
"""
import csv
import sys


def load(path):
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    start = next(i for i, line in enumerate(lines) if "Total Time (ns)" in line)
    return {r["Name"]: (float(r["Total Time (ns)"]), int(r["Instances"])) for r in csv.DictReader(lines[start:])}


short, long_, extra = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
top = int(sys.argv[4]) if len(sys.argv) > 4 else 30
rows = []
for name, (t, n) in long_.items():
    t0, n0 = short.get(name, (0.0, 0))
    dt, dn = (t - t0) / extra, (n - n0) / extra
    if dn > 0:
        rows.append((dt, dn, name))
rows.sort(reverse=True)
total = sum(r[0] for r in rows)
print(f"one step: {total / 1000:.1f} us of kernels in {sum(r[1] for r in rows):.0f} launches")
print("| us per step | launches | share | kernel |")
print("| --- | --- | --- | --- |")
for dt, dn, name in rows[:top]:
    print(f"| {dt / 1000:.1f} | {dn:.1f} | {100 * dt / total:.1f}% | `{name[:100]}` |")
