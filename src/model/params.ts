/** Graph nodes for a model's weights: constants for inference, trainable leaves for fine-tuning. */
import type { Node, Ops } from "../tensor/autograd.js";
import type { Tensor } from "../tensor/tensor.js";
import type { LlamaWeights } from "./weights.js";

export type NodesOf<T> = { [K in keyof T]: T[K] extends Tensor ? Node : T[K] extends Tensor | null ? Node | null : T[K] };

export type AttentionNodes = NodesOf<LlamaWeights["layers"][number]["attn"]>;
export type LayerNodes = Omit<NodesOf<LlamaWeights["layers"][number]>, "attn"> & { attn: AttentionNodes };
export interface ParamNodes {
  embed: Node;
  finalNorm: Node;
  lmHead: Node;
  layers: LayerNodes[];
}

/** Every tensor field of `obj` as a node (null and string fields as they are); `trainable(prefix + field)` says which get gradients. */
export function nodesOf<T extends object>(ops: Ops, obj: T, trainable: (path: string) => boolean, prefix = ""): NodesOf<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v === null || typeof v === "string") out[k] = v;
    else out[k] = ops.param(v as Tensor, trainable(prefix + k));
  }
  return out as NodesOf<T>;
}

/**
 * Wraps every weight in a node; `trainable(path)` says which get gradients (path like
 * "layers.3.attn.kUp" or "embed"). A tied LM head shares the embedding's node, so its gradient
 * accumulates into one tensor.
 */
export function paramNodes(ops: Ops, w: LlamaWeights, trainable: (path: string) => boolean): ParamNodes {
  const wrap = <T extends object>(obj: T, prefix: string): NodesOf<T> => nodesOf(ops, obj, trainable, prefix);
  const embed = ops.param(w.embed, trainable("embed"));
  return {
    embed,
    finalNorm: ops.param(w.finalNorm, trainable("finalNorm")),
    lmHead: w.lmHead === w.embed ? embed : ops.param(w.lmHead, trainable("lmHead")),
    layers: w.layers.map((l, i) => {
      const { attn, ...rest } = l;
      return { ...wrap(rest, `layers.${i}.`), attn: wrap(attn, `layers.${i}.attn.`) } as LayerNodes;
    }),
  };
}

/** Every distinct trainable leaf with its path (a tied head appears once, as "embed"). */
export function trainableLeaves(p: ParamNodes): { path: string; node: Node }[] {
  const out: { path: string; node: Node }[] = [];
  const seen = new Set<Node>();
  const add = (path: string, n: unknown) => {
    const node = n as Node;
    if (node && typeof node === "object" && "requiresGrad" in node && node.requiresGrad && !seen.has(node)) {
      seen.add(node);
      out.push({ path, node });
    }
  };
  add("embed", p.embed);
  p.layers.forEach((l, i) => {
    for (const [k, v] of Object.entries(l)) if (k !== "attn") add(`layers.${i}.${k}`, v);
    for (const [k, v] of Object.entries(l.attn)) add(`layers.${i}.attn.${k}`, v);
  });
  add("finalNorm", p.finalNorm);
  add("lmHead", p.lmHead);
  return out;
}
