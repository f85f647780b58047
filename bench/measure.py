"""Runs a command; prints its wall time and peak RSS (its process tree's largest) to stderr as one line.
usage: python3 bench/measure.py CMD ARGS..."""
import resource, subprocess, sys, time
t = time.time()
rc = subprocess.run(sys.argv[1:]).returncode
print(f"measure: wall {time.time() - t:.1f} s, peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GB, exit {rc}", file=sys.stderr)
sys.exit(rc)
