"""Summarize an ncu source page (SASS) as executed-instruction mix, stall reasons and hot basic blocks.

Made with: ncu -k regex:KERNEL -c 1 --set full --import-source yes -o REPORT node dist/bench/attention-train.js …
then:      ncu -i REPORT.ncu-rep --page source --csv --print-source sass > KERNEL-sass.csv
   or:     ncu -k regex:KERNEL --section SourceCounters --page source --print-source sass --csv node … > OUT
           (bench/decode-experiments.sh SASS=1; the program's own output before ncu's table is skipped)
Usage:     python3 bench/ncu_sass_summary.py KERNEL-sass.csv [...]

Besides the mix and the hot blocks: the share of executed instructions and stall samples of each stretch
of code between block barriers (BAR.SYNC), so a kernel's start-up, tile loop and finish show apart, and
the instructions with the most stall samples.
"""
import collections
import csv
import sys


def number(x):
    try:
        return int(float(x.replace(",", "")))
    except ValueError:
        return 0


def summarize(path):
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"Address","Source"')), None)
    if start is None:
        sys.exit(f"{path}: no per-instruction table (expected ncu's --page source --print-source sass --csv output)")
    rows = list(csv.reader(lines[start:]))
    hdr = rows[0]
    ix = {h: i for i, h in enumerate(hdr)}
    data = [r for r in rows[1:] if len(r) >= len(hdr)]
    stall_cols = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    ops, stalls = collections.Counter(), collections.Counter()
    blocks, cur = [], None
    for r in data:
        src = r[ix["Source"]].strip()
        words = src.split()
        if not words:
            continue
        op = (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
        n = number(r[ix["Instructions Executed"]])
        ops[op] += n
        for c in stall_cols:
            stalls[c] += number(r[ix[c]])
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
    stretches_and_hot_lines(data, ix, stall_cols)


def stretches_and_hot_lines(data, ix, stall_cols, top=12):
    """Shares per stretch between block barriers, then the top stall lines. A barrier closes its stretch;
    ncu samples a warp waiting at it on the instruction after, so that wait counts in the next stretch."""
    sample = lambda r: number(r[ix["Warp Stall Sampling (All Samples)"]])
    executed = lambda r: number(r[ix["Instructions Executed"]])
    total_i = sum(executed(r) for r in data) or 1
    total_s = sum(sample(r) for r in data) or 1
    print("  stretches between block barriers (first–last address, instructions, executed, stall samples):")
    first, count, ex, sm = 0, 0, 0, 0
    for k, r in enumerate(data):
        count, ex, sm = count + 1, ex + executed(r), sm + sample(r)
        if "BAR.SYNC" in r[ix["Source"]] or k == len(data) - 1:
            print(f"    {data[first][ix['Address']][-5:]}–{r[ix['Address']][-5:]} {count:5d} {100 * ex / total_i:5.1f}% {100 * sm / total_s:5.1f}%")
            first, count, ex, sm = k + 1, 0, 0, 0
    print(f"  the {top} instructions with the most stall samples:")
    for r in sorted(data, key=lambda r: -sample(r))[:top]:
        why = sorted(((number(r[ix[c]]), c[6:]) for c in stall_cols), reverse=True)[:2]
        print(f"    {r[ix['Address']][-5:]} {100 * sample(r) / total_s:5.1f}%  {r[ix['Source']].strip()[:64]}  ({', '.join(f'{v} {c}' for v, c in why if v)})")


for p in sys.argv[1:]:
    summarize(p)
