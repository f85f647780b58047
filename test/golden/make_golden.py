#!/usr/bin/env python3
"""Golden outputs for the foundation tests, from PyTorch + transformers + safetensors.

Run on the GPU machine (see ../shared/tools/device-node.md), from the repository root:
    python3 test/golden/make_golden.py --out fixtures/golden
It writes:
  stories260K_logits.safetensors, stories260K-mha_logits.safetensors   ids [T] (I64), logits [T, V] (F32)
  tiny-*/ (config.json, model.safetensors, tokenizer files) + tiny-*_logits.safetensors
      tiny random models exercising qwen2 q/k/v bias, llama3 and linear rope scaling, attention and
      MLP bias, untied heads and mistral's sliding window
  tokenizer_ids.json      HF tokenizer ids of fixtures/text/*.txt (with and without BOS)
  interop_py.safetensors  written by Python safetensors (bf16, f16, f32, i64, metadata)
  interop_check.json      whether Python read our interop_ts.safetensors bit-exactly
  perplexity.json         the DESIGN.md perplexity protocol in PyTorch (tinystories, ctx 256, 50k tokens)
"""
import argparse, json, os, shutil, sys, time
import torch
from safetensors import safe_open
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, AutoConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "fixtures")
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog."
INTEROP_METADATA = {"format": "pt", "producer": "mha2mla interop test", "note": "ünïcode ✓"}


def interop_floats():
    vals = [(((i * 7919) % 1001) - 500) / 37 for i in range(80)]
    vals += [0.0, -0.0, float("inf"), float("-inf"), 1e-40, -1e-40, 3.4e38, -3.4e38, 6.1e-5, 5.96e-8, 65504.0, 65520.0, 1e5, 1.00390625, 1.001953125, 0.1, -2.5]
    return torch.tensor(vals, dtype=torch.float32)


def interop_tensors():
    f = interop_floats()
    i64 = [0, 1, -1, 2**53 + 1, -(2**62), 2**63 - 1, -(2**63)] + [i * 1234567 - 5000000 for i in range(9)]
    return {
        "f32": f,
        "bf16": f.to(torch.bfloat16),
        "f16": f.to(torch.float16),
        "i64": torch.tensor(i64, dtype=torch.int64).reshape(4, 4),
        "nested.weight": torch.zeros((0, 3), dtype=torch.float32),
    }


def bits(t):
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.int64: torch.int64}[t.dtype])


def check_interop(out):
    want = interop_tensors()
    save_file(want, os.path.join(out, "interop_py.safetensors"), metadata=INTEROP_METADATA)
    ours = os.path.join(FIX, "golden", "interop_ts.safetensors")
    got = load_file(ours)
    with safe_open(ours, "pt") as f:
        meta = f.metadata()
    result = {"metadata_equal": meta == INTEROP_METADATA, "tensors": {}}
    for k, v in want.items():
        g = got.get(k)
        result["tensors"][k] = bool(g is not None and g.dtype == v.dtype and g.shape == v.shape and torch.equal(bits(g), bits(v)))
    result["all_equal"] = result["metadata_equal"] and all(result["tensors"].values()) and set(got) == set(want)
    json.dump(result, open(os.path.join(out, "interop_check.json"), "w"), indent=1)
    print("interop", result)


def logits_of(model_dir, ids):
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].float()


def save_logits(path, ids, logits):
    save_file({"ids": torch.tensor(ids, dtype=torch.int64), "logits": logits.contiguous()}, path)


TINY = {
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=512, max_position_embeddings=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny-llama3": dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        head_dim=16, vocab_size=512, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                        attention_bias=True, mlp_bias=True,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "tiny-linear": dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        vocab_size=512, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                        rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "tiny-mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=512, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=8),
}


def make_tiny(name, cfg, out, ids):
    torch.manual_seed(sum(map(ord, name)))
    config = AutoConfig.for_model(**cfg, bos_token_id=1, eos_token_id=2, initializer_range=0.3, hidden_act="silu")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    d = os.path.join(out, name)
    model.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIX, "models", "stories260K", f), d)
    save_logits(os.path.join(out, name + "_logits.safetensors"), ids, logits_of(d, ids))
    print(name, open(os.path.join(d, "config.json")).read())


def perplexity(model_dir, text_file, ctx, n_tokens):
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(open(text_file, encoding="utf-8").read(), add_special_tokens=False)["input_ids"][:n_tokens]
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    total, stride = 0.0, ctx - 1
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(ids), stride):
            chunk = ids[s:s + stride]
            inp = torch.tensor([[tok.bos_token_id] + chunk[:-1]])
            lp = torch.log_softmax(m(inp).logits[0].double(), -1)
            total -= lp[torch.arange(len(chunk)), torch.tensor(chunk)].sum().item()
    nll = total / len(ids)
    return {"model": os.path.basename(model_dir), "tokens": len(ids), "ctx": ctx, "nll": nll, "ppl": float(torch.tensor(nll).exp()), "seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(FIX, "golden"))
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(ROOT), "shared"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(8)
    check_interop(a.out)

    tok = AutoTokenizer.from_pretrained(os.path.join(FIX, "models", "stories260K"))
    texts = {}
    for f in sorted(os.listdir(os.path.join(FIX, "text"))):
        s = open(os.path.join(FIX, "text", f), encoding="utf-8", newline="").read()
        texts[f] = {"ids": tok(s, add_special_tokens=False)["input_ids"], "ids_with_bos": tok(s)["input_ids"][:8]}
    texts["prompt"] = {"ids": tok(PROMPT, add_special_tokens=False)["input_ids"], "ids_with_bos": tok(PROMPT)["input_ids"]}
    json.dump({"tokenizer_class": type(tok).__name__, "texts": texts}, open(os.path.join(a.out, "tokenizer_ids.json"), "w"))

    ids = texts["prompt"]["ids_with_bos"]
    for name in ("stories260K", "stories260K-mha"):
        save_logits(os.path.join(a.out, name + "_logits.safetensors"), ids, logits_of(os.path.join(FIX, "models", name), ids))
    long_ids = (ids * 3)[:40]
    for name, cfg in TINY.items():
        make_tiny(name, cfg, a.out, long_ids)

    text = os.path.join(a.shared, "data", "text", "tinystories_val.txt")
    if os.path.exists(text):
        ppl = [perplexity(os.path.join(FIX, "models", n), text, 256, 50000) for n in ("stories260K", "stories260K-mha")]
        json.dump({"torch": torch.__version__, "device": "cpu", "results": ppl}, open(os.path.join(a.out, "perplexity.json"), "w"), indent=1)
        print(ppl)
    else:
        print("skipped perplexity: no", text, file=sys.stderr)


if __name__ == "__main__":
    main()
