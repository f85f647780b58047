/**
 * A layer's projections of one input stacked back to back on the device (Backend.stackBf16), so that
 * linearMany runs them as one product: q/k/v (MHA), the rope keys and the latent (MLA), q and the
 * latent-plus-rope-key projection (deepseek_v3), gate and up (every layer). At decode's few rows each
 * separate product left most of the GPU idle or split K and summed the parts in more launches: a
 * recorded batch-8 step's products of the llama2-7b shape ran 18% faster stacked (bench/decode-products.cu,
 * docs/benchmarks.md). Only bf16 weights on a backend with stackBf16 (inference on the GPU); the
 * weights' values, shapes and fields are unchanged, each is a view of its stack.
 */
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import type { LlamaWeights } from "./weights.js";

/** Stacks each group of `w`'s layers in place (see the file comment); a group whose weights are not all bf16 is left as it is. */
export function stackProjections(w: LlamaWeights, backend: Backend): void {
  if (!backend.stackBf16) return;
  for (const layer of w.layers) {
    const a = layer.attn;
    stackFields(backend, a as unknown as Fields, a.kind === "mha" ? ["q", "k", "v"] : a.kind === "mla" ? ["kRope", "kvDown"] : ["q", "kvA"]);
    stackFields(backend, layer as unknown as Fields, ["gate", "up"]);
  }
}

type Fields = Record<string, Tensor>;

function stackFields(backend: Backend, holder: Fields, fields: readonly string[]): void {
  const parts = fields.map((f) => holder[f]!);
  const K = parts[0]!.shape[1];
  if (parts.some((p) => p.dtype !== "bf16" || p.shape.length !== 2 || p.shape[1] !== K)) return;
  const views = backend.stackBf16!(parts);
  fields.forEach((f, i) => (holder[f] = views[i]!));
  for (const p of parts) p.dispose();
}
