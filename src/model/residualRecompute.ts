/**
 * The taped recompute of a checkpointed layer without the products that feed only a residual add.
 * A decoder layer ends its two blocks with h1 = h + o_proj(heads) and out = h1 + down(swiglu): the
 * backward of those products reads their inputs and weights, never their outputs, and the backward
 * of an add reads nothing. So when the first (untaped) pass kept h1 and out, the recompute need not
 * run o_proj and down again: about a third of a llama layer's product FLOPs (32% at the llama2-7b
 * MLA shape: o_proj's 16.8M and down's 45.1M of ~195M weights per layer), on every checkpointed
 * layer of every step. Without the mid-layer sum (ForwardOptions.checkpointKeepsMid false) only
 * down is skipped (23%).
 */
import { Node, Ops, Tape } from "../tensor/autograd.js";
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";

export class ResidualRecomputeOps extends Ops {
  /** Skipped products whose residual add has not been reached yet → the sum the first pass kept. */
  private readonly pending = new Map<Node, Tensor>();

  /**
   * `sums`: for each weight node whose product is skipped (o_proj's, down's), the residual sum
   * [T, D] the first pass computed with it (h1, out). The product's node carries that tensor as a
   * stand-in value that nothing reads: only the add that consumes it may, and it returns the sum.
   */
  constructor(b: Backend, tape: Tape, private readonly sums: ReadonlyMap<Node, Tensor>) {
    super(b, tape);
  }

  override linear(x: Node, w: Node, bias: Node | null): Node {
    const sum = this.sums.get(w);
    if (!sum) return super.linear(x, w, bias);
    const node = this.linearOf(sum, x, w, bias);
    this.pending.set(node, sum);
    return node;
  }

  override add(a: Node, c: Node): Node {
    const sum = this.pending.get(c) ?? this.pending.get(a);
    if (!sum) return super.add(a, c);
    this.pending.delete(this.pending.has(c) ? c : a);
    return this.sumOf(sum, a, c);
  }

  /** Throws if a skipped product was not consumed by a residual add (its stand-in value was wrong to read). */
  checkConsumed(): void {
    if (this.pending.size === 0) return;
    // An invariant of the layer's structure, not bad input: a plain Error, as the model's other internal checks.
    throw new Error(`a checkpointed layer's recompute skipped ${this.pending.size} product(s) whose output was not only added to the residual stream`);
  }
}
