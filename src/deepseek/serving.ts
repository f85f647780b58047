/**
 * What the MLA serving stacks accept of a deepseek_v3 attention, so that `convert --format deepseek`
 * can say before the run when a chosen size will not be served by them (docs/formats.md, "Serving
 * stacks", has the sources). Our kv_lora_rank counts the constant channel that keeps
 * kv_a_layernorm an identity, so 512 means 511 learned latent dims; the bias-free form
 * (`--no-attention-bias`) has no such channel, so there 512 learned dims.
 */

/** The size every fused MLA decode kernel is built for (FlashMLA, CUTLASS MLA, FlashInfer trtllm-gen). */
export const FUSED_MLA = { kvLoraRank: 512, ropeDim: 64 } as const;
/** kv_lora_rank + qk_rope_head_dim that vLLM's MLA head-size gate lets through (320 only in recent versions). */
const VLLM_HEAD_SIZES = [576, 320];

/**
 * What `convert --format deepseek` can do about it for a source of head dim `headDim` whose latent can
 * hold at most `maxLatent` learned dims (min(2·KV heads·head_dim, hidden size)): the fused kernels'
 * sizes where they fit, else why they do not.
 */
export function convertRemedy(headDim: number, maxLatent: number, attentionBias = true): string {
  const need = FUSED_MLA.kvLoraRank - (attentionBias ? 1 : 0);
  if (headDim >= FUSED_MLA.ropeDim && maxLatent >= need) return `For the fused kernels convert with --kv-lora-rank ${FUSED_MLA.kvLoraRank} --rope-dim ${FUSED_MLA.ropeDim}`;
  return `This model cannot take the fused kernels' sizes (they need head_dim ≥ ${FUSED_MLA.ropeDim} and ${need} latent dims; it has head_dim ${headDim} and at most ${maxLatent})`;
}

/**
 * Why vLLM and SGLang do not serve our deepseek_v3 folders as written, whatever their sizes: both build
 * kv_a_proj_with_mqa and o_proj without a bias (attention_bias is not read) and skip a checkpoint's
 * biases on load, and the kv_a bias carries the constant latent channel that makes kv_a_layernorm an
 * identity (docs/deepseek.md). Without it the norm rescales every latent: stories260K's export scores
 * NLL 9.51 with the biases zeroed against 4.28.
 */
export const SERVING_BIAS_NOTE =
  "vLLM and SGLang build kv_a_proj_with_mqa and o_proj without a bias and skip the folder's biases on load; the kv_a bias is the constant channel that keeps kv_a_layernorm an identity, so they would compute another model (stock transformers reads the biases: attention_bias true). --no-attention-bias writes a bias-free folder they serve as written, with kv_a_layernorm fitted on the calibration text instead of exact (docs/deepseek.md)";

/**
 * Warnings for a deepseek_v3 folder with kv_lora_rank `rk`, qk_rope_head_dim `dr` and `heads` query
 * heads: the sizes the MLA stacks refuse (ending with `remedy`), then SERVING_BIAS_NOTE where the
 * folder has attention biases (a bias-free one computes the same model in every stack).
 */
export function servingWarnings(rk: number, dr: number, heads: number, remedy: string, attentionBias = true): string[] {
  const out: string[] = [];
  const size = rk + dr;
  if (rk !== FUSED_MLA.kvLoraRank || dr !== FUSED_MLA.ropeDim) {
    const vllm = VLLM_HEAD_SIZES.includes(size)
      ? `vLLM ${size === 320 ? "(recent versions only) " : ""}takes it on its Triton MLA backend`
      : `vLLM refuses it ("Head dimension ${size} is not supported by MLA": its MLA backends take kv_lora_rank + qk_rope_head_dim = 576, recent versions also 320)`;
    out.push(
      `kv_lora_rank ${rk} with qk_rope_head_dim ${dr}: FlashMLA, CUTLASS MLA and FlashInfer's MLA decode take only ${FUSED_MLA.kvLoraRank} with ${FUSED_MLA.ropeDim}; ${vllm}. ` +
        `Stock transformers loads any size. ${remedy}`,
    );
  }
  if (heads > 128) out.push(`${heads} query heads: vLLM's CUTLASS MLA backend takes at most 128`);
  if (attentionBias) out.push(SERVING_BIAS_NOTE);
  return out;
}
