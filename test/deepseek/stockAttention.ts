/** A float64 transcription of transformers' DeepseekV3Attention, the reference the deepseek tests hold our runtime to. */
import fs from "node:fs";
import path from "node:path";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { layerPrefix } from "../../src/model/weights.js";

/**
 * transformers' DeepseekV3Attention (q_lora_rank null, eager, no cache) in float64 from a folder's
 * tensors: q = q_proj(x); [c | k_pe] = kv_a(x) (+ its bias where attention_bias); c ← RMSNorm(c, 1e-6)·γ;
 * [k_nope | v] = kv_b(c) per head; RoPE (interleaved storage read as HF does) on q_pe and the shared
 * k_pe; softmax((q·k)·(dn + dr)^−½) causal; o_proj (+ bias). x [T, D] → [T, D].
 */
export function stockAttention(dir: string, layer: number, x: Float64Array, T: number): Float64Array {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  const { num_attention_heads: H, hidden_size: D, kv_lora_rank: rk, qk_rope_head_dim: dr, qk_nope_head_dim: dn, v_head_dim: dv, rope_theta: theta, attention_bias: bias, rope_interleave: inter } = cfg;
  const ck = Checkpoint.open(dir);
  const p = layerPrefix(layer) + "self_attn.";
  const t = (n: string) => Float64Array.from(ck.readF32(p + n));
  const [Wq, Wa, g, Wb, Wo] = ["q_proj.weight", "kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"].map(t) as Float64Array[];
  const ba = bias ? t("kv_a_proj_with_mqa.bias") : new Float64Array(rk + dr);
  const bo = bias ? t("o_proj.bias") : new Float64Array(D);
  ck.close();
  const lin = (W: Float64Array, b: Float64Array | null, rows: number, inp: Float64Array, n: number) => {
    const out = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = b ? b[r]! : 0;
      for (let k = 0; k < n; k++) s += W[r * n + k]! * inp[k]!;
      out[r] = s;
    }
    return out;
  };
  const half = dr / 2;
  // HF: interleaved (x0, y0, x1, y1, …) is viewed as (x0, x1, …, y0, y1, …), then rotate_half.
  const rope = (v: Float64Array, pos: number) => {
    const u = inter ? Float64Array.from({ length: dr }, (_, j) => (j < half ? v[2 * j]! : v[2 * (j - half) + 1]!)) : Float64Array.from(v);
    const o = new Float64Array(dr);
    for (let k = 0; k < half; k++) {
      const a = pos * Math.pow(theta, (-2 * k) / dr);
      o[k] = u[k]! * Math.cos(a) - u[k + half]! * Math.sin(a);
      o[k + half] = u[k + half]! * Math.cos(a) + u[k]! * Math.sin(a);
    }
    return o;
  };
  const qs: Float64Array[] = [], kn: Float64Array[] = [], vs: Float64Array[] = [], kpe: Float64Array[] = [];
  for (let s = 0; s < T; s++) {
    const xs = x.subarray(s * D, (s + 1) * D);
    qs.push(lin(Wq, null, H * (dn + dr), xs, D));
    const kv = lin(Wa, ba, rk + dr, xs, D);
    let ms = 0;
    for (let i = 0; i < rk; i++) ms += kv[i]! ** 2;
    const inv = 1 / Math.sqrt(ms / rk + 1e-6);
    const cn = Float64Array.from({ length: rk }, (_, i) => kv[i]! * inv * g[i]!);
    const b = lin(Wb, null, H * (dn + dv), cn, rk);
    kn.push(b);
    vs.push(b);
    kpe.push(rope(kv.subarray(rk), s));
  }
  const out = new Float64Array(T * D);
  for (let s = 0; s < T; s++) {
    const heads = new Float64Array(H * dv);
    for (let h = 0; h < H; h++) {
      const q = qs[s]!.subarray(h * (dn + dr), (h + 1) * (dn + dr));
      const qpe = rope(q.subarray(dn), s);
      const sc = Array.from({ length: s + 1 }, (_, u) => {
        let d = 0;
        for (let j = 0; j < dn; j++) d += q[j]! * kn[u]![h * (dn + dv) + j]!;
        for (let j = 0; j < dr; j++) d += qpe[j]! * kpe[u]![j]!;
        return d / Math.sqrt(dn + dr);
      });
      const mx = Math.max(...sc);
      const e = sc.map((v) => Math.exp(v - mx));
      const z = e.reduce((a, v) => a + v, 0);
      for (let u = 0; u <= s; u++) for (let j = 0; j < dv; j++) heads[h * dv + j] += (e[u]! / z) * vs[u]![h * (dn + dv) + dn + j]!;
    }
    out.set(lin(Wo, bo, D, heads, H * dv), s * D);
  }
  return out;
}
