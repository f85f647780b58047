// One JSON line for a `mha2mla finetune` run folder: steady-state tokens/s (after the first two
// steps), MFU (6·params·tokens/s over the H100/H200 dense bf16 peak of 989 TFLOP/s), peak GPU memory,
// and the host's own time per step beside the step's wall time (finetune.json's sitting.host_time_per_step:
// the last sitting's; top-level in summaries written before it moved).
// Usage: node bench/finetune_summary.mjs RUN_DIR PRECISION SEQ BATCH
import fs from "node:fs";
const [dir, precision, seq, batch] = process.argv.slice(2);
const rows = fs.readFileSync(`${dir}/train_log.jsonl`, "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((r) => r.tokens_per_s !== undefined);
const info = JSON.parse(fs.readFileSync(`${dir}/finetune.json`, "utf8"));
const host = info.sitting?.host_time_per_step ?? info.host_time_per_step;
const a = rows[Math.min(1, rows.length - 1)], z = rows[rows.length - 1];
const tps = z === a ? z.tokens_per_s : (z.tokens - a.tokens) / (z.elapsed_s - a.elapsed_s);
console.log(JSON.stringify({ tool: "mha2mla", precision, seq: +seq, batch: +batch, steps: z.step, tokens_per_s: Math.round(tps), mfu: +((6 * info.params * tps) / 989e12).toFixed(4), params: info.params, peak_gpu_gib: info.peak_device_bytes === null ? null : +(info.peak_device_bytes / 2 ** 30).toFixed(2), loss: +z.loss.toFixed(4), host_ms_per_step: host ? +host.host_ms.toFixed(1) : null, step_ms: host ? +host.step_ms.toFixed(1) : null }));
