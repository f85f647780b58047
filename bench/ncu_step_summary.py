"""Per-kernel summary of an `ncu --csv --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum`
log (bench/ncu-decode-step.sh, bench/ncu-eval-forward.sh): the kernels from the last launch whose name
matches START (default `embedding`: a decode step, and a forward, begins with the token embedding) to
the end of the log, grouped by kernel
name, most time first: launches, µs, share, MB read from DRAM and the rate. ncu serializes kernels and
locks clocks, so the sum exceeds a replayed step's wall time; the shares are what it is for.
Usage: python3 bench/ncu_step_summary.py LOG.csv [START]"""
import collections, csv, re, sys

path = sys.argv[1]
start = re.compile(sys.argv[2] if len(sys.argv) > 2 else "embedding")
rows = [r for r in csv.reader(open(path)) if r and not r[0].startswith("#")]
head = next(i for i, r in enumerate(rows) if r[0] == "ID")
h = rows[head]
col = {k: h.index(k) for k in ("ID", "Kernel Name", "Metric Name", "Metric Value")}
kernels = collections.OrderedDict()
for r in rows[head + 1 :]:
    m = kernels.setdefault(r[col["ID"]], {"name": r[col["Kernel Name"]]})
    m[r[col["Metric Name"]]] = float(r[col["Metric Value"]].replace(",", ""))
ids = list(kernels)
starts = [i for i, k in enumerate(ids) if start.search(kernels[k]["name"])]
if not starts:
    sys.exit(f"no kernel matches {start.pattern!r} in {path}")
step = [kernels[k] for k in ids[starts[-1] :]]
total_us = sum(k.get("gpu__time_duration.sum", 0) for k in step) / 1e3
total_mb = sum(k.get("dram__bytes_read.sum", 0) for k in step) / 1e6
groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
for k in step:
    g = groups[k["name"].split("(")[0].strip()]
    g[0] += 1
    g[1] += k.get("gpu__time_duration.sum", 0) / 1e3
    g[2] += k.get("dram__bytes_read.sum", 0) / 1e6
print(f"{len(step)} kernels, {total_us:.1f} µs, {total_mb:.1f} MB read ({total_mb / total_us:.2f} TB/s)")
print("| kernel | launches | µs | share | MB read | TB/s |")
print("| --- | --- | --- | --- | --- | --- |")
for name, (n, us, mb) in sorted(groups.items(), key=lambda x: -x[1][1]):
    print(f"| `{name[:90]}` | {n} | {us:.1f} | {100 * us / total_us:.1f}% | {mb:.1f} | {mb / us if us else 0:.2f} |")
