/**
 * Decode caches. MHA/GQA keeps keys (after RoPE) and values, 2·Hkv·Dh per token and layer; MLA keeps
 * the rope keys (after RoPE) and the latent, Hkv·2R + L per token and layer. Rows live in growable
 * buffers (capacity doubles), so appending a token copies only that token.
 */
import type { Backend } from "../tensor/backend.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";

/** Growable [S, rowSize] float rows. */
class RowBuffer {
  private buf: FloatArray = new Float32Array(0);
  rows = 0;
  constructor(readonly rowSize: number) {}

  append(values: FloatArray): void {
    const need = this.rows * this.rowSize + values.length;
    if (need > this.buf.length || this.buf.constructor !== values.constructor) {
      const n = Math.max(need, this.buf.length * 2, this.rowSize * 16);
      const grown = values instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
      grown.set(this.buf.subarray(0, this.rows * this.rowSize));
      this.buf = grown;
    }
    this.buf.set(values, this.rows * this.rowSize);
    this.rows += values.length / this.rowSize;
  }

  view(): FloatArray {
    return this.buf.subarray(0, this.rows * this.rowSize);
  }
}

export interface DecodeCache {
  /** Tokens cached so far. */
  readonly length: number;
  /** Floats held, summed over layers. */
  readonly elements: number;
  /** Called once per forward after every layer appended. */
  advance(tokens: number): void;
}

/** Pairs of row buffers per layer, shared by both cache kinds. */
abstract class TwoPartCache implements DecodeCache {
  private readonly a: RowBuffer[];
  private readonly b: RowBuffer[];
  private len = 0;

  constructor(protected readonly backend: Backend, layers: number, protected readonly shapeA: number[], protected readonly shapeB: number[]) {
    const size = (s: number[]) => s.reduce((x, y) => x * y, 1);
    this.a = Array.from({ length: layers }, () => new RowBuffer(size(shapeA)));
    this.b = Array.from({ length: layers }, () => new RowBuffer(size(shapeB)));
  }

  get length(): number {
    return this.len;
  }

  get elements(): number {
    return this.a.reduce((n, x, i) => n + x.view().length + this.b[i]!.view().length, 0);
  }

  advance(tokens: number): void {
    this.len += tokens;
  }

  protected appendBoth(layer: number, a: Tensor, b: Tensor): [Tensor, Tensor] {
    const A = this.a[layer]!;
    const B = this.b[layer]!;
    A.append(a.toArray());
    B.append(b.toArray());
    return [this.backend.upload(A.view(), [A.rows, ...this.shapeA]), this.backend.upload(B.view(), [B.rows, ...this.shapeB])];
  }

  /** What `layer` holds now, without appending. */
  protected both(layer: number): [Tensor, Tensor] {
    const A = this.a[layer]!;
    const B = this.b[layer]!;
    return [this.backend.upload(A.view(), [A.rows, ...this.shapeA]), this.backend.upload(B.view(), [B.rows, ...this.shapeB])];
  }
}

/** MHA/GQA cache: keys [S, Hkv, Dh] (after RoPE) and values [S, Hkv, Dh]. */
export class KvCache extends TwoPartCache {
  constructor(backend: Backend, layers: number, kvHeads: number, headDim: number) {
    super(backend, layers, [kvHeads, headDim], [kvHeads, headDim]);
  }

  /** Appends k, v [T, Hkv, Dh] to `layer`; returns all cached keys and values [S, Hkv, Dh]. */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    return this.appendBoth(layer, k, v);
  }
}

/** MLA cache: rope keys [S, Hkv, 2R] (after RoPE) and latents [S, L]. */
export class LatentCache extends TwoPartCache {
  constructor(backend: Backend, layers: number, kvHeads: number, ropeDims: number, latentDim: number) {
    super(backend, layers, [kvHeads, ropeDims], [latentDim]);
  }

  /** Appends kr [T, Hkv, 2R] and c [T, L] to `layer`; returns everything cached. */
  append(layer: number, kr: Tensor, c: Tensor): [Tensor, Tensor] {
    return this.appendBoth(layer, kr, c);
  }
}
