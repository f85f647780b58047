import type { CommandModule } from "yargs";
import { synth } from "../synth/synth.js";
import { ARCHS } from "../synth/archs.js";
import { parseDType } from "../io/dtype.js";
import { emitJson, summaryWriter } from "./output.js";

interface Args {
  arch: string;
  out: string;
  dtype: string;
  layers?: number;
  seed: number;
  "shard-size": number;
  force: boolean;
  json?: string;
}

export const synthCommand: CommandModule<object, Args> = {
  command: "synth",
  describe: "write a random-weight checkpoint of a known architecture (for benchmarks)",
  builder: (y) =>
    y
      .option("arch", { type: "string", demandOption: true, describe: `architecture: ${Object.keys(ARCHS).join(", ")}` })
      .option("out", { type: "string", demandOption: true, describe: "output folder (written atomically)" })
      .option("dtype", { choices: ["bf16", "f16", "f32"] as const, default: "bf16" as const, describe: "the weights' dtype" })
      .option("layers", { type: "number", describe: "override the number of layers" })
      .option("seed", { type: "number", default: 0, describe: "seed of the random weights (the same seed writes the same checkpoint)" })
      .option("shard-size", { type: "number", default: 5, describe: "maximum shard size in GiB" })
      .option("force", { type: "boolean", default: false, describe: "replace an existing --out" })
      .option("json", { type: "string", describe: "write a summary as JSON to FILE (no value: stdout)" }),
  handler: async (a) => {
    const say = summaryWriter(a.json);
    const r = await synth({ arch: a.arch, out: a.out, dtype: parseDType(a.dtype), layers: a.layers, seed: a.seed, maxShardBytes: a["shard-size"] * 2 ** 30, force: a.force, progress: process.stderr });
    say(`wrote ${r.out}: ${r.arch}, ${r.layers} layers, ${r.tensors} tensors, ${(r.bytes / 1e9).toFixed(2)} GB in ${r.shards} shard(s), ${r.seconds.toFixed(1)} s (${r.gbPerSecond.toFixed(2)} GB/s)\n`);
    if (a.json !== undefined) emitJson(a.json, { ...r, peak_rss_bytes: process.resourceUsage().maxRSS * 1024 });
  },
};
