import type { CommandModule } from "yargs";
import { writeReport } from "../eval/report/report.js";

interface Args {
  results: string[];
  out: string;
  "train-log"?: string[];
  labels?: string;
  force: boolean;
}

export const reportCommand: CommandModule<object, Args> = {
  command: "report <results..>",
  describe: "compare eval JSONs (before/after …) in one self-contained HTML file with charts, plus a Markdown twin",
  builder: (y) =>
    y
      // yargs gives a variadic positional a default of [] that its help then shows beside [required]: <results..> needs one file at least, so no default.
      .positional("results", { type: "string", array: true, demandOption: true, default: undefined, describe: "JSON files from `eval --json`" })
      .option("out", { type: "string", default: "report.html", describe: "HTML file (the .md twin is written beside it)" })
      .option("train-log", { type: "string", array: true, describe: "train_log.jsonl files to plot" })
      .option("labels", { type: "string", describe: "comma-separated column names (default: the eval labels)" })
      .option("force", { type: "boolean", default: false, describe: "replace files at --out (and its .md twin) that are not earlier reports (an earlier report is always replaced)" }),
  handler: (a) => {
    // "--labels orig, mla" as written after a comma: " mla" was a header with a leading space, and "x, x" two columns.
    const r = writeReport(a.results, a.out, { trainLogs: a["train-log"], labels: a.labels?.split(",").map((l) => l.trim()), force: a.force });
    process.stdout.write(`wrote ${r.html} and ${r.md}\n`);
  },
};
