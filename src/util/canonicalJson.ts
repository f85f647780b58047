/* A canonical JSON text: what a run's fingerprint (pipelineState) and a tokenizer's content hash (eval/identity) are taken of. */

/** JSON with every object's keys sorted (and, as JSON.stringify does, undefined fields left out): equal data, equal text. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map((x) => (x === undefined ? "null" : canonicalJson(x))).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const fields = Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`);
    return `{${fields.join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}
