#!/usr/bin/env python3
"""Golden NLLs for conversions at realistic dimensions: ../shared/models/mha26m-debian (6/6 heads, head
dim 64, hidden 384, full-rank K/V), from an independent PyTorch implementation (float64 SVD).

Run from the repository root (CPU is enough):  python3 test/golden/make_realistic_golden.py
Writes fixtures/golden/conversion_mha26m.json: calibration = the first 8 windows of 128 tokens (BOS
first) of debian_train.txt; for each (strategy, R, rank, svd, svd_init) setting, the NLL of the
converted model with the perplexity protocol (ctx 256) on the first 4096 tokens of debian_dev_val.txt,
computed with the original HF model whose key/value projections are replaced by the low-rank
reconstruction and whose RoPE is removed on the dropped pairs (an MLA forward is the same function):
  svd joint: one SVD of [position-free key rows; value rows], rank·Hkv dims; split: one of each
  svd_init weights: SVD of the weights; activations: of W·S^½ mapped back by S^−½, S the attention-
  input covariance of the calibration tokens, eigenvalues floored at 1e-6·max (src/svd/truncated.ts)
test/convert/realistic.test.ts checks our `convert` + `eval` against these within 0.5%.
"""
import json, math, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama as ml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_conversion_golden import two_norm, selection_for, patch_partial_rope, perplexity, convert_in_place  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MODEL = os.path.join(SHARED, "models", "mha26m-debian")
CALIB = os.path.join(SHARED, "data", "text", "debian_train.txt")
EVAL = os.path.join(SHARED, "data", "text", "debian_dev_val.txt")
CALIB_SAMPLES, CALIB_LEN, EVAL_TOKENS, CTX = 8, 128, 4096, 256
# (strategy, R, rank, svd, svd_init, balance): every strategy, both SVD layouts, both inits, two
# ranks, with and without BKV (--balance-kv, the default of `convert`).
SETTINGS = [
    ("high", 4, 16, "joint", "weights", False),
    ("uniform", 4, 16, "joint", "weights", False),
    ("2-norm", 4, 16, "joint", "weights", False),
    ("2-norm", 4, 32, "joint", "weights", False),
    ("2-norm", 4, 16, "split", "weights", False),
    ("2-norm", 4, 16, "joint", "activations", False),
    ("uniform", 8, 32, "split", "activations", False),
    ("2-norm", 4, 16, "joint", "weights", True),
    ("uniform", 4, 16, "joint", "activations", True),
]


def read(p):
    # Python text mode: universal newlines, as our runtime reads text.
    return open(p, encoding="utf-8").read()


def covariance(model, wins):
    L, D = model.config.num_hidden_layers, model.config.hidden_size
    cov = torch.zeros(L, D, D, dtype=torch.float64)
    n = 0
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(mod, args, kwargs, i=i):
            x = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[0].double()
            cov[i] += x.T @ x
        hooks.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        for w in wins:
            model(torch.tensor([w]))
            n += len(w)
    for h in hooks:
        h.remove()
    return cov / n


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(MODEL)
    load = lambda: AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()
    model = load()
    cfg = model.config
    bos = tok.bos_token_id
    ids = tok(read(CALIB)[:200_000], add_special_tokens=False)["input_ids"]
    stride = CALIB_LEN - 1
    wins = [[bos] + ids[w * stride:(w + 1) * stride] for w in range(CALIB_SAMPLES)]
    _, _, scores = two_norm(model, wins)
    cov = covariance(model, wins)
    ev = tok(read(EVAL)[:100_000], add_special_tokens=False)["input_ids"][:EVAL_TOKENS]
    assert len(ev) == EVAL_TOKENS
    out = {"model": "mha26m-debian", "calib": {"file": "debian_train.txt", "samples": CALIB_SAMPLES, "len": CALIB_LEN}, "eval": {"file": "debian_dev_val.txt", "tokens": EVAL_TOKENS, "ctx": CTX},
           "original_nll": perplexity(model, ev, CTX, bos), "settings": []}
    print("original", out["original_nll"], flush=True)
    for strategy, R, rank, svd, init, balance in SETTINGS:
        sel = selection_for(strategy, R, cfg.head_dim, cfg.num_hidden_layers, cfg.num_key_value_heads, scores)
        m = load()
        orig = ml.apply_rotary_pos_emb
        # BKV's energies, like the SVD, are weighed by the covariance only for activation-aware SVD.
        patch_partial_rope(m, convert_in_place(m, sel, rank, svd, cov if init == "activations" else None, balance))
        nll = perplexity(m, ev, CTX, bos)
        ml.apply_rotary_pos_emb = orig
        out["settings"].append({"strategy": strategy, "rope_pairs": R, "rank": rank, "svd": svd, "svd_init": init, "balance_kv": balance, "nll": nll, "selection": sel if strategy == "2-norm" else None})
        print(strategy, R, rank, svd, init, balance, nll, flush=True)
    json.dump(out, open(os.path.join(ROOT, "fixtures", "golden", "conversion_mha26m.json"), "w"))


if __name__ == "__main__":
    main()
