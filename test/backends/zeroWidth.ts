/**
 * Zero-sized dimensions on a backend (issue 16): a conversion that keeps every RoPE pair leaves
 * k_up_proj [0, L], so ops see M, K or N = 0. Each op must give outputs of the right shape: zeros,
 * or the bias / sums that remain. Returns one message per failed check (empty when all pass).
 */
import type { Backend } from "../../src/tensor/backend.js";
import type { Tensor } from "../../src/tensor/tensor.js";

export function zeroWidthFailures(B: Backend): string[] {
  const bad: string[] = [];
  const up = (shape: number[], fill = (i: number) => (i % 7) * 0.25 - 0.5) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return B.upload(Float32Array.from({ length: n }, (_, i) => fill(i)), shape);
  };
  const expect = (label: string, t: Tensor | null, shape: number[], values?: (i: number) => number) => {
    if (!t) return void bad.push(`${label}: null`);
    if (t.shape.join() !== shape.join()) return void bad.push(`${label}: shape [${t.shape}], expected [${shape}]`);
    const a = t.toArray();
    const n = shape.reduce((x, y) => x * y, 1);
    if (a.length !== n) return void bad.push(`${label}: ${a.length} values for shape [${shape}]`);
    for (let i = 0; i < n; i++) {
      const want = values ? values(i) : 0;
      if (!(Math.abs(a[i]! - want) <= 1e-5)) return void bad.push(`${label}: [${i}] = ${a[i]}, expected ${want}`);
    }
  };
  const run = (label: string, f: () => void) => {
    try {
      f();
    } catch (e) {
      bad.push(`${label}: threw ${(e as Error).message.split("\n")[0]}`);
    }
  };
  const all = { x: true, w: true, bias: true };
  const bias = (i: number) => (i % 7) * 0.25 - 0.5;
  for (const [M, K, N] of [[0, 5, 3], [4, 0, 3], [4, 5, 0], [0, 0, 0]] as const) {
    const tag = `M=${M} K=${K} N=${N}`;
    run(`linear ${tag}`, () => {
      expect(`linear ${tag}`, B.linear(up([M, K]), up([N, K])), [M, N]);
      // K = 0: nothing to sum, so y is the bias in every row.
      expect(`linear+bias ${tag}`, B.linear(up([M, K]), up([N, K]), up([N])), [M, N], K === 0 ? (i) => bias(i % N) : undefined);
      expect(`linear 3-D ${tag}`, B.linear(up([2, M, K]), up([N, K])), [2, M, N]);
    });
    run(`linearBackward ${tag}`, () => {
      const x = up([M, K]), w = up([N, K]), dy = up([M, N]);
      const g = B.linearBackward(x, w, dy, all);
      expect(`linearBackward dx ${tag}`, g.dx, [M, K]);
      expect(`linearBackward dw ${tag}`, g.dw, [N, K]);
      // db is the column sum of dy, whatever K is.
      const DY = dy.toArray();
      expect(`linearBackward db ${tag}`, g.db, [N], (n) => Array.from({ length: M }, (_, m) => DY[m * N + n]!).reduce((a, b) => a + b, 0));
    });
  }
  const opts = { scale: 0.5, queryOffset: 0, window: null };
  for (const [T, S, Dh, Dv] of [[0, 3, 4, 4], [3, 3, 0, 4], [3, 3, 4, 0], [2, 0, 4, 4], [0, 0, 0, 0]] as const) {
    const tag = `T=${T} S=${S} Dh=${Dh} Dv=${Dv}`;
    run(`attention ${tag}`, () => {
      const q = up([T, 4, Dh]), k = up([S, 2, Dh]), v = B.upload(new Float32Array(S * 2 * Dv).fill(1), [S, 2, Dv]);
      // Dh = 0: every score is 0, so each query averages the (all-ones) values it sees; S = 0: zeros.
      expect(`attention ${tag}`, B.attention(q, k, v, opts), [T, 4, Dv], S > 0 ? () => 1 : undefined);
      const g = B.attentionBackward(q, k, v, up([T, 4, Dv]), opts);
      // Every case here has a zero dimension, so dq and dk are zero; dv is p·dout unless S, T or Dv is 0.
      expect(`attentionBackward dq ${tag}`, g.dq, [T, 4, Dh]);
      expect(`attentionBackward dk ${tag}`, g.dk, [S, 2, Dh]);
      if (S && T && Dv) {
        if (g.dv.shape.join() !== [S, 2, Dv].join()) bad.push(`attentionBackward dv ${tag}: shape [${g.dv.shape}]`);
      } else expect(`attentionBackward dv ${tag}`, g.dv, [S, 2, Dv]);
    });
  }
  run("rope with 0 rotary dims", () => {
    const x = up([3, 2, 0]);
    const pos = Int32Array.of(0, 1, 2);
    expect("rope [3,2,0]", B.rope(x, pos, new Float64Array(0), 0), [3, 2, 0]);
    expect("ropeBackward [3,2,0]", B.ropeBackward(x, pos, new Float64Array(0), 0), [3, 2, 0]);
    expect("rope T=0", B.rope(up([0, 2, 4]), new Int32Array(0), Float64Array.of(1, 0.1), 4), [0, 2, 4]);
  });
  run("concatLast / splitLast / gatherCols / scatterCols with a zero-width part", () => {
    const a = up([3, 2, 4]);
    const z = up([3, 2, 0]);
    const A = a.toArray();
    expect("concatLast(a, [3,2,0])", B.concatLast(a, z), [3, 2, 4], (i) => A[i]!);
    expect("concatLast([3,2,0], a)", B.concatLast(z, a), [3, 2, 4], (i) => A[i]!);
    const [p, r] = B.splitLast(a, 4);
    expect("splitLast all", p, [3, 2, 4], (i) => A[i]!);
    expect("splitLast rest", r, [3, 2, 0]);
    expect("gatherCols none", B.gatherCols(a, new Int32Array(0)), [3, 2, 0]);
    expect("scatterCols none", B.scatterCols(z, new Int32Array(0), 4), [3, 2, 4]);
  });
  run("T = 0 rows", () => {
    expect("rmsnorm T=0", B.rmsnorm(up([0, 4]), up([4]), 1e-5), [0, 4]);
    const rn = B.rmsnormBackward(up([0, 4]), up([4]), 1e-5, up([0, 4]));
    expect("rmsnormBackward dx T=0", rn.dx, [0, 4]);
    expect("rmsnormBackward dw T=0", rn.dw, [4]);
    expect("swiglu n=0", B.swiglu(up([0, 6]), up([0, 6])), [0, 6]);
    const sg = B.swigluBackward(up([0, 6]), up([0, 6]), up([0, 6]));
    expect("swigluBackward dgate n=0", sg.dgate, [0, 6]);
    expect("embedding T=0", B.embedding(up([5, 4]), new Int32Array(0)), [0, 4]);
    expect("embeddingBackward T=0", B.embeddingBackward(new Int32Array(0), up([0, 4]), 5), [5, 4]);
    const ce = B.crossEntropy(up([0, 5]), new Int32Array(0));
    if (ce.length !== 0) bad.push(`crossEntropy T=0: ${ce.length} losses`);
    expect("crossEntropyBackward T=0", B.crossEntropyBackward(up([0, 5]), new Int32Array(0), 1), [0, 5]);
  });
  return bad;
}
