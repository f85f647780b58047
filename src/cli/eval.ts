import type { CommandModule } from "yargs";
import { evaluate } from "../eval/evaluate.js";
import { DEVICE_NAMES, DeviceName } from "../backends/select.js";
import { stderrLogger } from "../util/log.js";
import { emitJson } from "./output.js";

interface Args {
  model: string;
  text: string;
  ctx: number;
  tokens?: number;
  json?: string;
  device: DeviceName;
}

export const evalCommand: CommandModule<object, Args> = {
  command: "eval <model>",
  describe: "perplexity on a text ([BOS] + ctx−1 token windows, each token scored once)",
  builder: (y) =>
    y
      .positional("model", { type: "string", demandOption: true, describe: "model folder, HF hub id in the local cache, or alias" })
      .option("text", { type: "string", demandOption: true, describe: "UTF-8 text file to score" })
      .option("ctx", { type: "number", default: 256, describe: "window length including BOS" })
      .option("tokens", { type: "number", describe: "score only the first N tokens of the text" })
      .option("json", { type: "string", describe: "write the result as JSON to FILE (no value: stdout)" })
      .option("device", { choices: DEVICE_NAMES, default: "auto" as DeviceName, describe: "compute backend" }),
  handler: async (a) => {
    const r = await evaluate(a.model, { text: a.text, ctx: a.ctx, tokens: a.tokens, device: a.device, logger: stderrLogger });
    process.stdout.write(`${r.model}: nll ${r.nll.toFixed(5)} nats/token, ppl ${r.ppl.toFixed(4)} over ${r.tokens} tokens (ctx ${r.ctx}, ${r.windows} windows) in ${r.seconds.toFixed(1)} s on ${r.backend}\n`);
    if (a.json !== undefined) emitJson(a.json, r);
  },
};
