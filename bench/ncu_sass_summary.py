"""Summarize an ncu source page (SASS) as executed-instruction mix, stall reasons and hot basic blocks.

Made with: ncu -k regex:KERNEL -c 1 --set full --import-source yes -o REPORT node dist/bench/attention-train.js …
then:      ncu -i REPORT.ncu-rep --page source --csv --print-source sass > KERNEL-sass.csv
Usage:     python3 bench/ncu_sass_summary.py KERNEL-sass.csv [...]
"""
import collections
import csv
import sys


def summarize(path):
    rows = list(csv.reader(open(path)))
    hdr = rows[1]
    ix = {h: i for i, h in enumerate(hdr)}
    data = [r for r in rows[2:] if len(r) >= len(hdr)]
    stall_cols = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    ops, stalls = collections.Counter(), collections.Counter()
    blocks, cur = [], None
    for r in data:
        src = r[ix["Source"]].strip()
        words = src.split()
        if not words:
            continue
        op = (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
        n = int(r[ix["Instructions Executed"]] or 0)
        ops[op] += n
        for c in stall_cols:
            stalls[c] += int(r[ix[c]] or 0)
        # A run of consecutive instructions executed equally often: one basic block (or straight-line code).
        if cur and cur["n"] == n:
            cur["ops"].append(op)
        else:
            cur = {"n": n, "ops": [op], "addr": r[ix["Address"]][-5:]}
            blocks.append(cur)
    total = sum(ops.values())
    samples = sum(stalls.values()) or 1
    print(f"== {path}: {total} warp-level instructions executed")
    for op, n in ops.most_common(16):
        print(f"  {op:10s} {n:12d} {100 * n / total:5.1f}%")
    print("  stall reasons (share of samples):", ", ".join(f"{c[6:]} {100 * n / samples:.1f}%" for c, n in stalls.most_common(6)))
    print("  blocks with more than 1% of the instructions (address, executions, length, share, commonest ops):")
    for b in blocks:
        w = b["n"] * len(b["ops"])
        if w / total > 0.01:
            common = ", ".join(f"{o} {k}" for o, k in collections.Counter(b["ops"]).most_common(6))
            print(f"    {b['addr']} n={b['n']:8d} len={len(b['ops']):4d} {100 * w / total:5.1f}%  {common}")


for p in sys.argv[1:]:
    summarize(p)
