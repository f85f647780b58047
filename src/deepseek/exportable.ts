/**
 * Whether a model in our MLA format can be written exactly as deepseek_v3 (`export --format
 * deepseek`, ./fromMla.ts): the checks, and the one rope ladder every layer shares; and whether a
 * source's declared attention biases can be (`convert --format deepseek`: checkDeclaredBiases). Kept
 * apart from the writers so `inspect` and `pipeline` can ask without loading them.
 */
import { MlaError } from "../errors.js";
import { Checkpoint } from "../io/checkpoint.js";
import { MlaAttention, MlaSplit, ModelConfig, uniformSplit } from "../model/config.js";
import { layerPrefix } from "../model/weights.js";

/** The ladder every layer shares: spacing s = gcd of the kept pairs, m = max/s + 1 slots. Throws on a frequency two KV heads of a layer keep. */
export function exportLadder(selection: number[][][]): { spacing: number; slots: number } {
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  let spacing = 0;
  let top = 0;
  selection.forEach((layer, l) => {
    const owner = new Map<number, number>();
    layer.forEach((pairs, g) =>
      pairs.forEach((i) => {
        const other = owner.get(i);
        if (other !== undefined)
          throw new MlaError(
            "UNSUPPORTED",
            `export --format deepseek: layer ${l} keeps RoPE pair ${i} on KV heads ${other} and ${g}; DeepSeek-V3 has one shared rope key, so two heads cannot both rotate one frequency`,
            "convert the original with --rope-disjoint (then fine-tune and export), or convert the original with --format deepseek",
          );
        owner.set(i, g);
        spacing = gcd(spacing, i);
        top = Math.max(top, i);
      }),
    );
  });
  spacing ||= 1;
  return { spacing, slots: top / spacing + 1 };
}

/** Why a per-layer model (`convert --kv-split per-layer`) cannot be exported; `detail` says what differs. */
export function perLayerRefusal(detail: string): MlaError {
  return new MlaError(
    "UNSUPPORTED",
    `export --format deepseek: ${detail}, and DeepSeek-V3's config has one kv_lora_rank and one qk_rope_head_dim for every layer`,
    "export a uniform conversion (convert without --kv-split per-layer), or serve this model in our runtime",
  );
}

/** The split every layer of `a` shares: the only kind of model DeepSeek-V3's single latent and rope widths can hold. */
export function exportSplit(a: MlaAttention): MlaSplit {
  const s = uniformSplit(a);
  if (!s) throw perLayerRefusal(`the model's layers keep different RoPE pairs and latent widths (per layer R ${a.splits.map((x) => x.ropePairs).join(", ")}; latent ${a.splits.map((x) => x.latentDim).join(", ")})`);
  return s;
}

/**
 * What keeps a model of this shape (its config, R rope pairs, gated or not) from an exact export:
 * checked on the MLA folder by `export`, and on the source and settings by `pipeline --export`
 * before any work.
 */
export function checkExportSettings(c: ModelConfig, ropePairs: number, gated: boolean): void {
  const no = (what: string, hint = "serve it in our runtime") => new MlaError("UNSUPPORTED", `export --format deepseek: ${what}`, hint);
  if (gated) throw no("the model is EG-MLA, and DeepSeek-V3's attention has no gate", "export a plain MLA conversion (convert without --attention eg-mla)");
  if (ropePairs < 1) throw no("the model keeps no RoPE pair, and DeepSeek-V3 needs a rope key", "convert with --rope-pairs ≥ 1");
  if (2 * ropePairs >= c.headDim) throw no(`every RoPE pair is kept (R ${ropePairs} = head_dim/2), which leaves DeepSeek-V3 no position-free key dims (qk_nope_head_dim 0)`, `convert with --rope-pairs < ${c.headDim / 2}`);
  if (c.qkvBias) throw qkvBiasRefusal("export --format deepseek", c, "serve it in our runtime");
  if (c.rope.scaling) throw no(`rope scaling "${c.rope.scaling.type}" changes the frequency ladder`);
  if (c.slidingWindow !== null) throw no("DeepseekV3 has no sliding-window attention");
  if (c.mlpBias) throw no("DeepseekV3's MLP has no biases");
}

/**
 * Why q/k/v biases the config declares (Qwen2's; Llama's and our MLA format's under attention_bias)
 * may not be writable: DeepseekV3Attention's biases are kv_a_proj_with_mqa's and o_proj's, under
 * attention_bias, and none on q_proj (q_lora_rank null, as both writers write it) or kv_b_proj. Case by
 * case:
 * - v: the softmax weights of a query sum to 1, so b_v adds the constant W_o·b_v to the layer's output:
 *   exactly an o_proj bias (exact form only).
 * - k: on the position-free dims q·b_k is one constant per query, which softmax cancels exactly; on the
 *   rope dims it turns with the key's position and does not cancel, but it sits in the rope rows of
 *   kv_a_proj_with_mqa's bias (exact form only).
 * - q: b_q·k_s changes with every key s, so softmax does not cancel it, and q_proj has no bias to hold
 *   it (q_lora_rank's q_a_proj bias sits before an RMSNorm). Only a q bias that is zero can be written.
 * `convert --format deepseek` reads the biases (checkDeclaredBiases in ./export.ts): a q bias that is
 * zero in every layer needs no tensor, and the k, v and o biases are folded as above (./layer.ts); a
 * non-zero one is refused with this error, `nonZero` naming the first such tensor. `export` asks the
 * config alone (checkExportSettings): every config that declares k/v biases declares the q bias with
 * them, and fine-tuning our format trains it away from zero, so such a model is refused before any work
 * (pipeline asks these checks before its first phase). Undeclared (stray) biases in a file are another
 * matter: ./stream.ts, strayNotes.
 */
export function qkvBiasRefusal(command: string, c: ModelConfig, hint: string, nonZero?: { name: string; index: number; value: number }): MlaError {
  const why = c.modelType === "qwen2" ? "model_type qwen2" : "attention_bias: true";
  const which = nonZero ? `${nonZero.name} is not zero (element ${nonZero.index}: ${nonZero.value})` : `${layerPrefix(0)}self_attn.q_proj.bias and the others`;
  return new MlaError(
    "UNSUPPORTED",
    `${command}: the model has q/k/v biases (${why} in config.json: ${which}), and DeepseekV3 has no q_proj bias (its attention biases are kv_a_proj_with_mqa's and o_proj's); a q bias adds b_q·k to every score, which softmax does not cancel`,
    hint,
  );
}

/**
 * The declared attention biases of an MHA/GQA source (`convert --format deepseek`), read from its
 * weights before any work (a dry run and pipeline's up-front checks too): refused where DeepSeek-V3
 * cannot hold them (qkvBiasRefusal says why, case by case). A q bias must be zero in every layer (+0 or
 * −0: either adds nothing to any score), else the first non-zero tensor is named. The bias-free form
 * (`attentionBias` false) has neither kv_a_proj_with_mqa's nor o_proj's bias, so there the k, v and o
 * biases must be zero as well (a k bias's position-free part would cancel, but its rope part would not;
 * the check does not split them).
 */
export function checkDeclaredBiases(srcDir: string, c: ModelConfig, attentionBias: boolean): void {
  if (!c.qkvBias && !c.oBias) return;
  const src = Checkpoint.open(srcDir);
  try {
    checkDeclaredBiasesOf(src, c, attentionBias);
  } finally {
    src.close();
  }
}

/** checkDeclaredBiases on `src`, open already (`convert --format deepseek` reads the layers from it next). */
export function checkDeclaredBiasesOf(src: Checkpoint, c: ModelConfig, attentionBias: boolean): void {
  if (!c.qkvBias && !c.oBias) return;
  const firstNonZero = (field: string) => {
    for (let l = 0; l < c.layers; l++) {
      const name = `${layerPrefix(l)}self_attn.${field}.bias`;
      if (!src.has(name)) throw new MlaError("BAD_CHECKPOINT", `${src.dir}: tensor ${name} is missing`, "the checkpoint does not match its config");
      const b = src.readF32(name);
      const index = b.findIndex((v) => v !== 0);
      if (index >= 0) return { name, index, value: b[index]! };
    }
    return null;
  };
  const q = c.qkvBias ? firstNonZero("q_proj") : null;
  if (q) throw qkvBiasRefusal("--format deepseek", c, "convert it in our format (without --format deepseek), which keeps the biases", q);
  if (attentionBias) return;
  for (const field of [...(c.qkvBias ? ["k_proj", "v_proj"] : []), ...(c.oBias ? ["o_proj"] : [])]) {
    const nz = firstNonZero(field);
    if (nz)
      throw new MlaError(
        "UNSUPPORTED",
        `--format deepseek --no-attention-bias: ${nz.name} is not zero (element ${nz.index}: ${nz.value}), and the bias-free form has no kv_a_proj_with_mqa or o_proj bias to hold it`,
        "drop --no-attention-bias: the exact form folds k, v and o biases into kv_a_proj_with_mqa's and o_proj's biases",
      );
  }
}
