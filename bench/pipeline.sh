#!/usr/bin/env bash
# The evaluation issue's acceptance 3: `pipeline` on the bundled model end to end (convert,
# fine-tune, three evaluations with all five tasks, report). Prints a Markdown line for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/mha2mla-pipeline}
CMD="node dist/src/cli/main.js pipeline stories260K --rank 4 --rope-pairs 1 --calib fixtures/text/tinystories.txt --finetune-data ../shared/data/text/tinystories_val.txt --tokens 65536 --eval-text fixtures/text/tinystories_heldout.txt --tasks arc-easy,arc-challenge,piqa,hellaswag,lambada --limit 50 --out $OUT --force"
start=$(date +%s.%N)
$CMD > /dev/null 2>&1
end=$(date +%s.%N)
echo "| \`${CMD#node dist/src/cli/main.js }\` | $(node -e "console.log(($end-$start).toFixed(0))") s | $(grep -c '^| ' $OUT/report.md) table rows, columns: $(sed -n 3p $OUT/report.md) |"
