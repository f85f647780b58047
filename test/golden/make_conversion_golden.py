#!/usr/bin/env python3
"""Golden numbers for the conversion tests, from an independent PyTorch implementation.

Run on the GPU machine from the repository root:  python3 test/golden/make_conversion_golden.py
Writes fixtures/golden/conversion.json with, for stories260K and stories260K-mha:
  two_norm:  calibration stats on fixtures/text/tinystories.txt (4 windows of 128 tokens, BOS first):
             mean per-pair L2 norms of pre-RoPE q = q_proj(x), k = k_proj(x) at each attention input,
             scores = sum over the query heads of a KV group of q_norm * k_norm, and the top-R selection
  settings:  for several (strategy, R, rank) settings, the perplexity of the converted model
             (joint weight SVD, float64 torch.linalg.svd) on fixtures/text/tinystories_25k.txt
             (DESIGN.md protocol, ctx 256), computed with the original HF model whose key/value
             projections are replaced by the low-rank reconstruction and whose RoPE is removed on the
             dropped pairs (an MLA forward is the same function)
"""
import json, math, os
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama as ml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "fixtures")
SETTINGS = [("high", 1, 2), ("uniform", 2, 4), ("low", 1, 4), ("2-norm", 1, 4), ("2-norm", 2, 2), ("high", 4, 8)]


def read(p):
    return open(p, encoding="utf-8", newline="").read()


def windows(tok, text, n, length, bos):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stride = length - 1
    return [[bos] + ids[w * stride:(w + 1) * stride] for w in range(min(n, len(ids) // stride))]


def two_norm(model, wins):
    cfg = model.config
    L, H, Hkv, Dh = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    half = Dh // 2
    qn = torch.zeros(L, H, half, dtype=torch.float64)
    kn = torch.zeros(L, Hkv, half, dtype=torch.float64)
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(mod, args, kwargs, i=i):
            x = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[0].double()
            q = (x @ mod.q_proj.weight.double().T).view(-1, H, 2, half)
            k = (x @ mod.k_proj.weight.double().T).view(-1, Hkv, 2, half)
            qn[i] += q.norm(dim=2).mean(0)
            kn[i] += k.norm(dim=2).mean(0)
        hooks.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        for w in wins:
            model(torch.tensor([w]))
    for h in hooks:
        h.remove()
    qn /= len(wins)
    kn /= len(wins)
    g = H // Hkv
    scores = (qn.view(L, Hkv, g, half) * kn.view(L, Hkv, 1, half)).sum(2)
    return qn, kn, scores


def top_pairs(s, R):
    order = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))
    return sorted(order[:R])


def selection_for(strategy, R, Dh, L, Hkv, scores):
    half = Dh // 2
    if strategy == "high":
        return [[list(range(R))] * Hkv for _ in range(L)]
    if strategy == "low":
        return [[list(range(half - R, half))] * Hkv for _ in range(L)]
    if strategy == "uniform":
        return [[[k * Dh // (2 * R) for k in range(R)]] * Hkv for _ in range(L)]
    return [[top_pairs(scores[l, g], R) for g in range(Hkv)] for l in range(L)]


def roots(C):
    """C^½ and C^−½ with eigenvalues floored at 1e-6·max, as src/svd/truncated.ts covarianceRoots."""
    vals, vecs = torch.linalg.eigh(C)
    vals = torch.clamp(vals, min=max(vals.max().item(), 1e-30) * 1e-6)
    return (vecs * vals.sqrt()) @ vecs.T, (vecs / vals.sqrt()) @ vecs.T


def low_rank(A, k, whiten=None):
    """Best rank-k approximation of A (float64), or of A·S^½ mapped back by S^−½ (activation-aware)."""
    if whiten is not None:
        A = A @ whiten[0]
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    R = (U[:, :k] * S[:k]) @ Vh[:k]
    return R @ whiten[1] if whiten is not None else R


def convert_in_place(model, sel, rank, svd="joint", cov=None, balance=False):
    """Replace W_k nope rows and W_v by their rank-(rank*Hkv) reconstruction (one joint SVD, or one
    each with svd="split"; activation-aware with the per-layer input covariance `cov`; with `balance`
    the joint SVD sees K/α, α² = mean key-row energy / mean value-row energy, w·S·wᵀ under `cov`);
    return per-layer rope masks."""
    cfg = model.config
    Hkv, Dh = cfg.num_key_value_heads, cfg.head_dim
    half = Dh // 2
    masks = []
    for l, layer in enumerate(model.model.layers):
        a = layer.self_attn
        keep = torch.zeros(Hkv, Dh, dtype=torch.bool)
        for g in range(Hkv):
            for p in sel[l][g]:
                keep[g, p] = keep[g, p + half] = True
        wk = a.k_proj.weight.detach().double().clone()
        wv = a.v_proj.weight.detach().double().clone()
        nope = (~keep).flatten().nonzero().flatten()
        whiten = roots(cov[l]) if cov is not None else None
        r = rank * Hkv
        if svd == "joint":
            alpha = 1.0
            if balance:
                S = cov[l] if cov is not None else torch.eye(wk.shape[1], dtype=torch.float64)
                energy = lambda W: ((W @ S) * W).sum(1).mean().item()
                alpha = math.sqrt(energy(wk[nope]) / energy(wv))
            Ar = low_rank(torch.cat([wk[nope] / alpha, wv], 0), r, whiten)
            kn, vr = Ar[: len(nope)] * alpha, Ar[len(nope):]
        else:
            kn, vr = low_rank(wk[nope], r, whiten), low_rank(wv, r, whiten)
        wk[nope] = kn
        with torch.no_grad():
            a.k_proj.weight.copy_(wk.float())
            a.v_proj.weight.copy_(vr.float())
        masks.append(keep)
    return masks


def patch_partial_rope(model, masks):
    """RoPE only on the kept pairs: q dims follow the mask of their KV group."""
    cfg = model.config
    g = cfg.num_attention_heads // cfg.num_key_value_heads
    orig = ml.apply_rotary_pos_emb
    for l, layer in enumerate(model.model.layers):
        layer.self_attn._mla_mask = masks[l]
    state = {}

    def pre(mod, args, kwargs):
        state["mask"] = mod._mla_mask
    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(pre, with_kwargs=True)

    def partial(q, k, cos, sin, *a, **kw):
        qr, kr = orig(q, k, cos, sin, *a, **kw)
        mk = state["mask"].to(q.device)  # [Hkv, Dh]
        mq = mk.repeat_interleave(g, 0)
        return torch.where(mq[None, :, None, :], qr, q), torch.where(mk[None, :, None, :], kr, k)
    ml.apply_rotary_pos_emb = partial


def perplexity(model, ids, ctx, bos):
    stride, total = ctx - 1, 0.0
    with torch.no_grad():
        for s in range(0, len(ids), stride):
            chunk = ids[s:s + stride]
            lp = torch.log_softmax(model(torch.tensor([[bos] + chunk[:-1]])).logits[0].double(), -1)
            total -= lp[torch.arange(len(chunk)), torch.tensor(chunk)].sum().item()
    return total / len(ids)


def main():
    torch.set_num_threads(8)
    out = {"calib": {"file": "fixtures/text/tinystories.txt", "samples": 4, "len": 128}, "eval": {"file": "fixtures/text/tinystories_25k.txt", "ctx": 256}, "models": {}}
    for name in ("stories260K", "stories260K-mha"):
        d = os.path.join(FIX, "models", name)
        tok = AutoTokenizer.from_pretrained(d)
        load = lambda: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        model = load()
        cfg = model.config
        wins = windows(tok, read(os.path.join(FIX, "text", "tinystories.txt")), 4, 128, tok.bos_token_id)
        qn, kn, scores = two_norm(model, wins)
        ids = tok(read(os.path.join(FIX, "text", "tinystories_25k.txt")), add_special_tokens=False)["input_ids"]
        rec = {"two_norm": {"q_norm": qn.tolist(), "k_norm": kn.tolist(), "scores": scores.tolist()}, "original_nll": perplexity(model, ids, 256, tok.bos_token_id), "settings": []}
        for strategy, R, rank in SETTINGS:
            sel = selection_for(strategy, R, cfg.head_dim, cfg.num_hidden_layers, cfg.num_key_value_heads, scores)
            m = load()
            ml_apply = ml.apply_rotary_pos_emb
            patch_partial_rope(m, convert_in_place(m, sel, rank))
            nll = perplexity(m, ids, 256, tok.bos_token_id)
            ml.apply_rotary_pos_emb = ml_apply
            rec["settings"].append({"strategy": strategy, "rope_pairs": R, "rank": rank, "selection": sel, "nll": nll, "ppl": math.exp(nll)})
            print(name, strategy, R, rank, nll, math.exp(nll), flush=True)
        out["models"][name] = rec
    json.dump(out, open(os.path.join(FIX, "golden", "conversion.json"), "w"))


if __name__ == "__main__":
    main()
