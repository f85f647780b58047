import type { CommandModule } from "yargs";
import { inspectModel } from "../eval/inspect.js";
import { emitJson, printTable } from "./output.js";

export const inspectCommand: CommandModule<object, { model: string; json?: string }> = {
  command: "inspect <model>",
  describe: "architecture, parameter count, KV-cache elements and bytes per token",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "model folder, HF hub id in the local cache, or alias (llama2-7b, stories260K …)" })
      .option("json", { type: "string", describe: "print JSON (to stdout, or to FILE when given)" }),
  handler: (a) => {
    const r = inspectModel(a.model);
    if (a.json !== undefined) return emitJson(a.json, r);
    printTable(Object.entries(r));
  },
};
