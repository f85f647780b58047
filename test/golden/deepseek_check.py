"""Stock Hugging Face transformers on a folder written by `mha2mla convert --format deepseek`.

Loads it with `DeepseekV3ForCausalLM.from_pretrained` (no trust_remote_code, float32, eager attention),
and prints one JSON line:
  nll          the perplexity protocol of `mha2mla eval` (windows of --ctx tokens, BOS first, stride
               ctx−1) over the first --tokens tokens of --text, read in Python text mode
  nll_exact    the same with kv_a_layernorm replaced by the exact linear map it approximates
               (c ↦ c·γ·√rk/β): the cost of the stock norm before any fine-tuning; for a bias-free
               folder (--no-attention-bias, attention_bias false), which has no constant channel β,
               the identity c ↦ c (its γ is fitted so the normalised latent reproduces c)
  logits       float32 logits [T, V] of the first --logits-tokens tokens (BOS first), for our
               runtime's parity test (written to --fixture as safetensors with the ids)
Usage (repository root; CPU is enough):
  python3 test/golden/deepseek_check.py --model DIR --text FILE --tokens 20000 --ctx 256 \
      [--fixture fixtures/golden/NAME_deepseek.safetensors --logits-tokens 48]
"""
import argparse, json, math, os, sys
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from transformers import AutoTokenizer, DeepseekV3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_conversion_golden import perplexity as nll  # noqa: E402  (the protocol of `mha2mla eval`)


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--model", required=True)
    a.add_argument("--text", required=True)
    a.add_argument("--tokens", type=int, default=20000)
    a.add_argument("--ctx", type=int, default=256)
    a.add_argument("--fixture")
    a.add_argument("--logits-tokens", type=int, default=48)
    o = a.parse_args()
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM.from_pretrained(o.model, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(o.model)
    bos = model.config.bos_token_id
    ids = tok(open(o.text, encoding="utf-8").read(), add_special_tokens=False)["input_ids"][: o.tokens]
    res = {"model": o.model, "class": type(model).__name__, "kv_lora_rank": model.config.kv_lora_rank, "qk_rope_head_dim": model.config.qk_rope_head_dim, "tokens": len(ids), "ctx": o.ctx}
    res["nll"] = nll(model, ids, o.ctx, bos)
    # The exact map the norm stands in for: RMSNorm(c_ext)·γ ≈ c·γ·√rk/β with β the constant channel,
    # which the kv_a bias holds. The bias-free form has neither (kv_a_proj_with_mqa.bias is None there):
    # its γ is fitted so the normalised latent reproduces the latent c, so the map is the identity.
    for layer in model.model.layers:
        at = layer.self_attn
        if model.config.attention_bias:
            rk = at.kv_lora_rank
            beta = at.kv_a_proj_with_mqa.bias[rk - 1].item()
            gamma = at.kv_a_layernorm.weight.detach().clone()
            at.kv_a_layernorm.forward = (lambda g, s: (lambda x: x * g * s))(gamma, math.sqrt(rk) / beta)
        else:
            at.kv_a_layernorm.forward = lambda x: x
    res["nll_exact"] = nll(model, ids, o.ctx, bos)
    # Reloaded: the fixture's logits are stock transformers' own, with the stock norm.
    model = DeepseekV3ForCausalLM.from_pretrained(o.model, dtype=torch.float32, attn_implementation="eager").eval()
    if o.fixture:
        from safetensors.torch import save_file
        seq = [bos] + ids[: o.logits_tokens - 1]
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].float().contiguous()
        save_file({"ids": torch.tensor(seq, dtype=torch.float32), "logits": logits}, o.fixture, metadata={"model": os.path.basename(o.model.rstrip("/")), "transformers": __import__("transformers").__version__})
        res["fixture"] = o.fixture
    print(json.dumps(res))


if __name__ == "__main__":
    main()
