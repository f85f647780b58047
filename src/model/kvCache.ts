/**
 * Per-layer key/value cache for MHA/GQA decoding: keys [S, Hkv, Dh] (after RoPE) and values
 * [S, Hkv, Dh], grown by appending the new rows of each step.
 */
import type { Backend } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";

export class KvCache {
  private keys: Float32Array[];
  private values: Float32Array[];
  private len = 0;

  constructor(private readonly backend: Backend, readonly layers: number, readonly kvHeads: number, readonly headDim: number) {
    this.keys = Array.from({ length: layers }, () => new Float32Array(0));
    this.values = Array.from({ length: layers }, () => new Float32Array(0));
  }

  get length(): number {
    return this.len;
  }

  /** Elements held, summed over layers (what the KV accounting predicts). */
  get elements(): number {
    return this.keys.reduce((n, k, i) => n + k.length + this.values[i]!.length, 0);
  }

  /** Appends k, v [T, Hkv, Dh] to `layer` and returns the whole cached keys and values [S, Hkv, Dh]. */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const grow = (old: Float32Array, add: Float32Array) => {
      const n = new Float32Array(old.length + add.length);
      n.set(old);
      n.set(add, old.length);
      return n;
    };
    this.keys[layer] = grow(this.keys[layer]!, k.toArray());
    this.values[layer] = grow(this.values[layer]!, v.toArray());
    const S = this.keys[layer]!.length / (this.kvHeads * this.headDim);
    return [this.backend.upload(this.keys[layer]!, [S, this.kvHeads, this.headDim]), this.backend.upload(this.values[layer]!, [S, this.kvHeads, this.headDim])];
  }

  /** Called once per forward after every layer appended. */
  advance(t: number): void {
    this.len += t;
  }
}
