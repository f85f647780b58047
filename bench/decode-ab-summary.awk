# The verdict of a bench/decode-ab.sh log: per row kind (model, route, context, batch), each side's median
# tokens/s over its rounds, the change of the tree's median, and how many rounds' pairs (base r, tree r) the
# tree gains. One GPU's processes differ by a few percent, so a change is read from pairs, not one round.
# Usage: awk -f bench/decode-ab-summary.awk LOG
function trim(s) { gsub(/^ +| +$/, "", s); return s }
function median(list,    n, a, i, j, t) {
  n = split(list, a, " ")
  for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^\| row \| base median/ { exit }  # a summary already appended to the log
/^== (base|tree) round [0-9]+/ { side = $2; round = $4; next }
/^\| / && side != "" {
  split($0, f, "|")
  key = trim(f[2]) " (" trim(f[3]) ") " trim(f[4]) " × " trim(f[5])
  split(f[9], v, " ")
  if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
  rate[key, side, round] = v[1]
  all[key, side] = all[key, side] " " v[1]
  if (round > rounds) rounds = round
}
END {
  if (nk == 0) { print "no rows"; exit 1 }
  print "| row | base median | tree median | change | pairs the tree gains |"
  print "| --- | --- | --- | --- | --- |"
  for (k = 1; k <= nk; k++) {
    key = keys[k]; pairs = 0; gains = 0
    for (r = 1; r <= rounds; r++) if ((key, "base", r) in rate && (key, "tree", r) in rate) { pairs++; if (rate[key, "tree", r] > rate[key, "base", r]) gains++ }
    b = median(all[key, "base"]); t = median(all[key, "tree"])
    printf "| %s | %.1f | %.1f | %+.1f%% | %d of %d |\n", key, b, t, 100 * (t - b) / b, gains, pairs
  }
}
