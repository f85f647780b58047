/**
 * The HBM bound the GPU benches divide by: the card's own peak bandwidth from bench/hbm.json (shared
 * with the PyTorch peers' scripts, bench/hbm.py), so an H100's rows are not judged against the H200's
 * 4.8 TB/s. MHA2MLA_HBM_TBPS (TB/s) overrides the table.
 */
import fs from "node:fs";
import path from "node:path";
import { packageRoot } from "../src/io/modelDir.js";

interface HbmTable {
  cards: { match: string; tbps: number }[];
  default: number;
}

/** Peak bytes/s for the device named in `info` (the CUDA backend's "NAME, … MiB, sm_…" line), and how it was chosen. */
export function hbmBound(info: string): { bytesPerS: number; label: string } {
  const name = info.split(",")[0]!.trim();
  const forced = Number(process.env["MHA2MLA_HBM_TBPS"]);
  if (process.env["MHA2MLA_HBM_TBPS"] && forced > 0) return { bytesPerS: forced * 1e12, label: `${forced} TB/s, MHA2MLA_HBM_TBPS` };
  const table = JSON.parse(fs.readFileSync(path.join(packageRoot(), "bench", "hbm.json"), "utf8")) as HbmTable;
  const card = table.cards.find((c) => name.includes(c.match));
  return card ? { bytesPerS: card.tbps * 1e12, label: `${card.tbps} TB/s, ${name}` } : { bytesPerS: table.default * 1e12, label: `${table.default} TB/s assumed: ${name} is not in bench/hbm.json` };
}
