/**
 * A tape over coarse ops. Each differentiable op computes its forward on the backend and, when a
 * tape is recording and an input needs a gradient, pushes a closure that turns the output's
 * gradient into input gradients with the backend's backward op. `backward` runs the closures in
 * reverse. Without a tape the same functions are plain forward calls.
 */
import type { AttentionOptions, Backend, ProductInputHint } from "./backend.js";
import type { Tensor } from "./tensor.js";
import { attentionBackwardOf, attentionForTrainingOf, attentionOf } from "./sequences.js";

/**
 * Whether a gradient slot still holds an earlier step's values: its next gradient is written over
 * them rather than added, which spares a zero fill of every slot per step (TrainState). Shared by the
 * nodes that write one slot (a tied LM head and its embedding).
 */
export interface SlotFlag {
  stale: boolean;
}

export class Node {
  grad: Tensor | null = null;
  /**
   * A trainable leaf's slot in a flat gradient buffer (same element count as value): gradients are
   * added into it in place (through Backend.training) and `grad` stays null.
   */
  gradTarget: Tensor | null = null;
  /** gradTarget's SlotFlag, where the slot is not zeroed before each step. */
  slotFlag: SlotFlag | null = null;
  /**
   * `grad` is this node's own tensor (a fresh backward result, or a sum made here), not one shared
   * with another node (an add passes its gradient to both inputs): further gradients may be added
   * into it in place.
   */
  private gradOwned = false;
  constructor(readonly value: Tensor, readonly requiresGrad: boolean) {}

  /** `fresh`: g was just made for this node alone (the caller keeps no other reference). */
  accumulate(b: Backend, g: Tensor, fresh = false): void {
    if (this.gradTarget && this.slotFlag?.stale) {
      // addInto checks the sizes; a short copy would leave the stale tail in place.
      if (g.size !== this.gradTarget.size) throw new Error(`a gradient of ${g.size} elements for a slot of ${this.gradTarget.size}`);
      b.training!.copyInto(this.gradTarget, 0, g);
      this.slotFlag.stale = false;
    } else if (this.gradTarget) b.training!.addInto(this.gradTarget, g);
    else if (!this.grad) [this.grad, this.gradOwned] = [g, fresh];
    else if (this.gradOwned && b.training) b.training.addInto(this.grad, g);
    else [this.grad, this.gradOwned] = [b.add(this.grad, g), true];
  }

  /** The tensor a backward may add x's next gradient into (see Backend.linearBackward's dxInto). */
  get gradSum(): Tensor | undefined {
    return this.requiresGrad && !this.gradTarget && this.grad && this.gradOwned ? this.grad : undefined;
  }
}

export class Tape {
  private steps: (() => void)[] = [];

  constructor(readonly backend: Backend) {}

  push(step: () => void): void {
    this.steps.push(step);
  }

  /** Seeds `root` with `seed` (d loss / d root) and runs every recorded step in reverse. */
  backward(root: Node, seed: Tensor): void {
    root.grad = seed;
    for (let i = this.steps.length - 1; i >= 0; i--) this.steps[i]!();
    this.steps = [];
  }
}

/** The differentiable ops, bound to a backend and an optional tape. */
export class Ops {
  /**
   * `replaysTraining`: an untaped forward whose layer is run again, taped, for its backward
   * (activation checkpointing). Its attention takes the training route, so the output the layers
   * above read and the recomputed one come from the same kernel, bit for bit.
   */
  constructor(readonly b: Backend, readonly tape: Tape | null, readonly replaysTraining = false) {}

  protected out(value: Tensor, inputs: (Node | null | undefined)[], backward: (g: Tensor) => void): Node {
    const needs = this.tape !== null && inputs.some((n) => n?.requiresGrad);
    const node = new Node(value, needs);
    if (needs)
      this.tape!.push(() => {
        if (node.grad) backward(node.grad);
      });
    return node;
  }

  constant(t: Tensor): Node {
    return new Node(t, false);
  }

  param(t: Tensor, trainable: boolean): Node {
    return new Node(t, trainable);
  }

  linear(x: Node, w: Node, bias: Node | null): Node {
    return this.linearOf(this.b.linear(x.value, w.value, bias?.value), x, w, bias);
  }

  /** The node of x·wᵀ + bias with `value` as its forward value: the backward reads x and w, never `value`. */
  protected linearOf(value: Tensor, x: Node, w: Node, bias: Node | null): Node {
    const b = this.b;
    return this.out(value, [x, w, bias], (g) => {
      const dwInto = w.requiresGrad && w.gradTarget ? w.gradTarget.reshape(w.value.shape) : undefined;
      const r = b.linearBackward(x.value, w.value, g, { x: x.requiresGrad, w: w.requiresGrad, bias: !!bias?.requiresGrad, dwInto, dwOverwrite: w.slotFlag?.stale, dxInto: x.gradSum });
      if (r.dx) x.accumulate(b, r.dx, true);
      if (r.dw) w.accumulate(b, r.dw);
      else if (dwInto && w.slotFlag) w.slotFlag.stale = false; // the backend wrote dwInto
      if (r.db && bias) bias.accumulate(b, r.db);
    });
  }

  rmsnorm(x: Node, w: Node, eps: number, hint?: ProductInputHint): Node {
    const b = this.b;
    return this.out(b.rmsnorm(x.value, w.value, eps, hint), [x, w], (g) => {
      const r = b.rmsnormBackward(x.value, w.value, eps, g);
      if (x.requiresGrad) x.accumulate(b, r.dx, true);
      if (w.requiresGrad) w.accumulate(b, r.dw);
    });
  }

  reshape(x: Node, shape: readonly number[]): Node {
    return this.out(x.value.reshape(shape), [x], (g) => x.accumulate(this.b, g.reshape(x.value.shape)));
  }

  rope(x: Node, positions: Int32Array, invFreq: Float64Array, rotaryDims?: number): Node {
    const b = this.b;
    return this.out(b.rope(x.value, positions, invFreq, rotaryDims), [x], (g) => x.accumulate(b, b.ropeBackward(g, positions, invFreq, rotaryDims), true));
  }

  attention(q: Node, k: Node, v: Node, opts: AttentionOptions): Node {
    const b = this.b;
    const training = this.tape !== null && [q, k, v].some((n) => n.requiresGrad);
    // A backward will follow: let the backend keep what it can reuse there (the softmax statistics).
    const { o, saved } = training || this.replaysTraining ? attentionForTrainingOf(b, q.value, k.value, v.value, opts) : { o: attentionOf(b, q.value, k.value, v.value, opts), saved: null };
    if (!training && saved) saved.lse.dispose();
    return this.out(o, [q, k, v], (g) => {
      const r = attentionBackwardOf(b, q.value, k.value, v.value, g, opts, saved);
      if (q.requiresGrad) q.accumulate(b, r.dq, true);
      if (k.requiresGrad) k.accumulate(b, r.dk, true);
      if (v.requiresGrad) v.accumulate(b, r.dv, true);
    });
  }

  /** `gradHint`: only products read gate's and up's gradients (no bias, no other consumer). */
  swiglu(gate: Node, up: Node, hint?: ProductInputHint, gradHint?: ProductInputHint): Node {
    const b = this.b;
    return this.out(b.swiglu(gate.value, up.value, hint), [gate, up], (g) => {
      const r = b.swigluBackward(gate.value, up.value, g, gradHint);
      if (gate.requiresGrad) gate.accumulate(b, r.dgate, true);
      if (up.requiresGrad) up.accumulate(b, r.dup, true);
    });
  }

  add(a: Node, c: Node): Node {
    return this.sumOf(this.b.add(a.value, c.value), a, c);
  }

  /** The node of a + c with `value` as its forward value (the backward passes the gradient to both). */
  protected sumOf(value: Tensor, a: Node, c: Node): Node {
    return this.out(value, [a, c], (g) => {
      if (a.requiresGrad) a.accumulate(this.b, g);
      if (c.requiresGrad) c.accumulate(this.b, g);
    });
  }

  embedding(table: Node, ids: Int32Array): Node {
    const b = this.b;
    return this.out(b.embedding(table.value, ids), [table], (g) => table.accumulate(b, b.embeddingBackward(ids, g, table.value.shape[0]!)));
  }

  gatherCols(x: Node, idx: Int32Array): Node {
    const b = this.b;
    return this.out(b.gatherCols(x.value, idx), [x], (g) => x.accumulate(b, b.scatterCols(g, idx, x.value.shape[x.value.shape.length - 1]!), true));
  }

  concatLast(a: Node, c: Node): Node {
    const b = this.b;
    const A = a.value.shape[a.value.shape.length - 1]!;
    return this.out(b.concatLast(a.value, c.value), [a, c], (g) => {
      const [ga, gc] = b.splitLast(g, A);
      if (a.requiresGrad) a.accumulate(b, ga);
      if (c.requiresGrad) c.accumulate(b, gc);
    });
  }
}
