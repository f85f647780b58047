/**
 * Writes fixtures/golden/interop_ts.safetensors, the file `make_golden.py` loads with Python's
 * safetensors to check that ours reads back bit-exactly there. Values come from interopTensors(),
 * the same formula the Python script uses. Run: node dist/test/golden/write_interop.js
 */
import path from "node:path";
import { writeSafetensorsSync } from "../../src/io/safetensors.js";
import { packageRoot } from "../../src/io/modelDir.js";
import { interopTensors, INTEROP_METADATA } from "./interopValues.js";

const out = path.join(packageRoot(), "fixtures", "golden", "interop_ts.safetensors");
writeSafetensorsSync(out, interopTensors(), INTEROP_METADATA);
console.log(`wrote ${out}`);
