"""PyTorch reference for `mha2mla finetune` on OUR MLA checkpoint format (docs/formats.md), for the
"recovery fine-tune within 1% of PyTorch" check (bench/finetune.sh's "PyTorch reference" column).

It reads a converted folder (config.json with the `mha2mla` section, safetensors, tokenizer.json),
builds the model as an nn.Module (src/model/llama.ts + src/model/attention/mla.ts, prefill form),
and replicates the trainer: data split and sequences (src/finetune/data.ts, mulberry32 epoch order
from src/finetune/rng.ts), lrAt of src/finetune/schedule.ts (warmup then WSD), AdamW, clip, loss
= mean cross-entropy over batch·(seq−1) targets, validation NLL with the perplexity protocol
(src/eval/perplexity.ts) on the held-out tail, and the same protocol on --eval-text.

  python3 test/golden/finetune_mla_torch.py --model MLA_DIR --train tinystories_val.txt \
      --eval-text wikitext2_valid.txt --eval-tokens 20000 --tokens 200000 --seq 256 --batch 16 --lr 1e-3
  python3 test/golden/finetune_mla_torch.py --model MLA_DIR --check-logits --eval-text FILE --ctx 256 --eval-tokens N
      (compare with `mha2mla eval MLA_DIR --text FILE --ctx 256 --tokens N --weights f32`)

Prints one JSON line. Text is read in Python text mode (universal newlines) as asked; our runtime
reads text the same way (universal newlines); --raw-newlines keeps "\r" as older versions of our runtime did.
"""
import argparse, glob, json, math, os, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

def jround(x):  # JavaScript Math.round
    return math.floor(x + 0.5)

def inv_freq(theta, Dh, s):  # src/model/config.ts ropeInvFreq (as HF transformers)
    inv = [1.0 / theta ** (2 * i / Dh) for i in range(Dh // 2)]
    kind = (s.get("rope_type") or s.get("type")) if s else None
    if kind in (None, "default"): return inv
    if kind == "linear": return [f / s["factor"] for f in inv]
    if kind != "llama3": sys.exit(f"rope scaling {kind} is not supported")
    fac, lo, hi, om = s["factor"], s.get("low_freq_factor", 1), s.get("high_freq_factor", 4), s.get("original_max_position_embeddings", 8192)
    def one(f):
        wl = 2 * math.pi / f
        if wl < om / hi: return f
        if wl > om / lo: return f / fac
        sm = (om / wl - lo) / (hi - lo)
        return (1 - sm) * (f / fac) + sm * f
    return [one(f) for f in inv]

class Cfg:
    def __init__(self, d):
        r = json.load(open(os.path.join(d, "config.json"), encoding="utf-8"))
        self.D, self.F, self.layers = r["hidden_size"], r["intermediate_size"], r["num_hidden_layers"]
        self.H = r["num_attention_heads"]
        self.Hkv = r.get("num_key_value_heads") or self.H
        self.Dh = r.get("head_dim") or self.D // self.H
        self.V, self.eps = r["vocab_size"], r.get("rms_norm_eps") or 1e-6
        rp = r.get("rope_parameters") or None
        theta = rp["rope_theta"] if rp and isinstance(rp.get("rope_theta"), (int, float)) else (r.get("rope_theta") or 10000.0)
        self.inv_freq = inv_freq(theta, self.Dh, r.get("rope_scaling") or rp)
        self.tie = r.get("tie_word_embeddings") is True
        mt = r["model_type"]
        win = mt == "mistral" or (mt == "qwen2" and r.get("use_sliding_window") is True)
        self.window = r["sliding_window"] if win and isinstance(r.get("sliding_window"), int) else None
        self.bos = r["bos_token_id"] if isinstance(r.get("bos_token_id"), int) else None
        eos = r.get("eos_token_id")
        self.eos = eos if isinstance(eos, int) else (eos[0] if isinstance(eos, list) and eos else None)
        m = r.get("mha2mla")
        if not m or m.get("format_version") != 1: sys.exit("config.json has no mha2mla section of format_version 1")
        self.R, self.L, self.sel = m["rope_pairs"], m["latent_dim"], m["selection"]

def rope(x, pos, inv):
    """Rotate-half RoPE on the first 2R dims of x [B,T,n,Dh] (pairs i, i+R), inv [n,R] per head (float32)."""
    R = inv.shape[1]
    if R == 0: return x
    a = (pos.float()[:, None, None] * inv[None]).double()  # angle rounded to f32 as HF and our runtime
    cos, sin = a.cos().to(x.dtype), a.sin().to(x.dtype)
    x1, x2, rest = x[..., :R], x[..., R:2 * R], x[..., 2 * R:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], -1)

class MlaAttention(nn.Module):
    def __init__(self, c, layer, W, p):
        super().__init__()
        self.c, R, Dh, half = c, c.R, c.Dh, c.Dh // 2
        lin = lambda name, i, o: self._lin(W, p + name, i, o)
        self.q_proj = lin("q_proj", c.D, c.H * Dh)
        self.k_rope_proj = lin("k_rope_proj", c.D, c.Hkv * 2 * R)
        self.kv_down_proj = lin("kv_down_proj", c.D, c.L)
        self.k_up_proj = lin("k_up_proj", c.L, c.Hkv * (Dh - 2 * R))
        self.v_up_proj = lin("v_up_proj", c.L, c.Hkv * Dh)
        self.o_proj = lin("o_proj", c.H * Dh, c.D)
        sel, group, order, qf = c.sel[layer], c.H // c.Hkv, [], []
        for h in range(c.H):  # config.ts headDimOrder: [sel, sel + Dh/2, then the rest ascending]
            s = sel[h // group]
            rope_dims = list(s) + [p + half for p in s]
            order += [h * Dh + d for d in rope_dims + [d for d in range(Dh) if d not in set(rope_dims)]]
            qf.append([c.inv_freq[p] for p in s])
        self.register_buffer("q_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("q_freq", torch.tensor(qf, dtype=torch.float32).view(c.H, R), persistent=False)
        kf = [[c.inv_freq[p] for p in sel[g]] for g in range(c.Hkv)]
        self.register_buffer("k_freq", torch.tensor(kf, dtype=torch.float32).view(c.Hkv, R), persistent=False)

    @staticmethod
    def _lin(W, name, i, o):
        w = W.pop(name + ".weight")
        assert tuple(w.shape) == (o, i), f"{name}.weight has shape {tuple(w.shape)}, expected {(o, i)}"
        m = nn.Linear(i, o, bias=name + ".bias" in W)
        m.weight.data.copy_(w)
        if m.bias is not None: m.bias.data.copy_(W.pop(name + ".bias"))
        return m

    def forward(self, x, pos):
        c, B, T = self.c, x.shape[0], x.shape[1]
        q = rope(self.q_proj(x)[..., self.q_order].view(B, T, c.H, c.Dh), pos, self.q_freq)
        kr = rope(self.k_rope_proj(x).view(B, T, c.Hkv, 2 * c.R), pos, self.k_freq)
        lat = self.kv_down_proj(x)
        kn = self.k_up_proj(lat).view(B, T, c.Hkv, c.Dh - 2 * c.R)
        k, v = torch.cat([kr, kn], -1), self.v_up_proj(lat).view(B, T, c.Hkv, c.Dh)
        g = c.H // c.Hkv  # query head h reads KV head h // g
        q, k, v = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(g, 1), v.transpose(1, 2).repeat_interleave(g, 1)
        if c.window is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(c.Dh))
        else:  # key j visible to query i when i - window < j <= i (src/tensor/backend.ts visibleRange)
            i, j = pos[:, None], pos[None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & (i - j < c.window), scale=1 / math.sqrt(c.Dh))
        return self.o_proj(o.transpose(1, 2).reshape(B, T, c.H * c.Dh))

class RMSNorm(nn.Module):
    def __init__(self, w, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(w.float().clone()), eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)

class Layer(nn.Module):
    def __init__(self, c, i, W):
        super().__init__()
        p = f"model.layers.{i}."
        self.input_layernorm = RMSNorm(W.pop(p + "input_layernorm.weight"), c.eps)
        self.self_attn = MlaAttention(c, i, W, p + "self_attn.")
        self.post_attention_layernorm = RMSNorm(W.pop(p + "post_attention_layernorm.weight"), c.eps)
        self.gate_proj = MlaAttention._lin(W, p + "mlp.gate_proj", c.D, c.F)
        self.up_proj = MlaAttention._lin(W, p + "mlp.up_proj", c.D, c.F)
        self.down_proj = MlaAttention._lin(W, p + "mlp.down_proj", c.F, c.D)

    def forward(self, h, pos):
        h = h + self.self_attn(self.input_layernorm(h), pos)
        y = self.post_attention_layernorm(h)
        return h + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))

class MlaModel(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c = c = Cfg(d)
        W = {}
        for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
            W.update({k: v.float() for k, v in load_file(f).items()})
        self.embed = nn.Embedding(c.V, c.D)
        self.embed.weight.data.copy_(W.pop("model.embed_tokens.weight"))
        self.layers = nn.ModuleList(Layer(c, i, W) for i in range(c.layers))
        self.norm = RMSNorm(W.pop("model.norm.weight"), c.eps)
        self.lm_head = nn.Linear(c.D, c.V, bias=False)
        if c.tie: self.lm_head.weight = self.embed.weight  # one parameter, as params.ts ties them
        else: self.lm_head.weight.data.copy_(W.pop("lm_head.weight"))
        W.pop("lm_head.weight", None)
        if W: print(f"warning: tensors not used: {sorted(W)[:8]}", file=sys.stderr)

    def forward(self, ids):  # ids [B, T], positions 0…T−1
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.embed(ids)
        for l in self.layers: h = l(h, pos)
        return self.lm_head(self.norm(h))

def load_tokenizer(d):
    path = os.path.join(d, "tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        from transformers import PreTrainedTokenizerFast
        t = PreTrainedTokenizerFast(tokenizer_file=path)
        return lambda s: t(s, add_special_tokens=False)["input_ids"]
    tj = json.load(open(path, encoding="utf-8"))
    tok, twin, n = Tokenizer.from_str(json.dumps(tj)), None, tj.get("normalizer") or {}
    first = (n.get("normalizers") or [{}])[0] if n.get("type") == "Sequence" else {}
    if first.get("type") == "Prepend" and first.get("prepend") == "\u2581":  # as src/io/tokenizer.ts withoutPrepend
        twin = Tokenizer.from_str(json.dumps(dict(tj, normalizer=dict(n, normalizers=n["normalizers"][1:]))))
    return lambda s: (twin if twin is not None and s.startswith(" ") else tok).encode(s, add_special_tokens=False).ids

def read_text(f, raw):
    return open(f, encoding="utf-8", newline="" if raw else None).read()

def read_docs(f, raw):  # src/finetune/data.ts readDocuments
    text = read_text(f, raw)
    if not f.endswith(".jsonl"): return [text]
    return [json.loads(l)["text"] for l in text.split("\n") if l.strip()]

def permutation(n, state):  # src/finetune/rng.ts: mulberry32 + Fisher–Yates
    M = 0xFFFFFFFF
    imul = lambda a, b: (a * b) & M
    p = list(range(n))
    for i in range(n - 1, 0, -1):
        state = (state + 0x6D2B79F5) & M
        t = imul(state ^ (state >> 15), state | 1)
        t ^= (t + imul(t ^ (t >> 7), t | 61)) & M
        j = math.floor(((t ^ (t >> 14)) & M) / 4294967296 * (i + 1))
        p[i], p[j] = p[j], p[i]
    return p

def split(files, encode, eos, o):  # src/finetune/data.ts loadTrainingData: one stream, EOS between documents
    stream = []
    for f in files:
        for d in read_docs(f, o.raw_newlines):
            if stream and eos is not None and d: stream.append(eos)
            stream += encode(d)
    cut = math.floor(len(stream) * (1 - o.val_fraction))
    return stream[: math.floor(cut * o.fraction)], stream[cut:]

def sequences(train, S, bos, seed):  # data.ts sequence + epochOrder, consumed as trainer.ts nextSequence
    nseq, epoch = len(train) // (S - 1), 0
    while True:
        for i in permutation(nseq, (seed * 1000003 + epoch * 7919 + 17) & 0xFFFFFFFF):
            yield [bos] + train[i * (S - 1):(i + 1) * (S - 1)]
        epoch += 1

def lr_at(step, total, lr, warmup_steps, decay_fraction):  # src/finetune/schedule.ts lrAt, "wsd"
    if step < warmup_steps: return lr * (step + 1) / warmup_steps
    start = max(warmup_steps, jround(total * (1 - decay_fraction)))  # the decay starts after warmup at the earliest
    return lr if step < start else lr * (1 - math.sqrt((step - start) / max(1, total - start)))

@torch.no_grad()
def nll(model, ids, ctx, bos, dev, amp):  # src/eval/perplexity.ts
    model.eval()
    total, stride = 0.0, ctx - 1
    for w in range(math.ceil(len(ids) / stride)):
        chunk = ids[w * stride:(w + 1) * stride]
        x = torch.tensor([[bos] + chunk[:-1]], device=dev)
        with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
            logits = model(x)
        total += F.cross_entropy(logits[0].double(), torch.tensor(chunk, device=dev), reduction="sum").item()
    model.train()
    return total / len(ids)

def main():
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--model", required=True, help="converted MLA folder")
    a.add_argument("--train", nargs="+", help="training text / .jsonl files (finetune --data)")
    a.add_argument("--eval-text", "--val", dest="eval_text", help="text scored with the perplexity protocol")
    a.add_argument("--eval-tokens", type=int, help="score only the first N tokens of --eval-text")
    a.add_argument("--ctx", type=int, default=256, help="eval window incl. BOS (mha2mla eval --ctx)")
    a.add_argument("--tokens", type=int, help="training token budget (default one epoch)")
    a.add_argument("--seq", type=int, default=256); a.add_argument("--batch", type=int, default=16)
    a.add_argument("--lr", type=float, default=1e-3); a.add_argument("--warmup", type=float, default=0.05)
    a.add_argument("--decay-fraction", type=float, default=0.2); a.add_argument("--val-fraction", type=float, default=0.1)
    a.add_argument("--fraction", type=float, default=1.0); a.add_argument("--weight-decay", type=float, default=0.01)
    a.add_argument("--clip", type=float, default=1.0); a.add_argument("--seed", type=int, default=0)
    a.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="bf16 = autocast (master weights f32)")
    a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a.add_argument("--raw-newlines", action="store_true", help="keep \\r\\n as our runtime does")
    a.add_argument("--check-logits", action="store_true", help="only print the NLL on --eval-text")
    a.add_argument("--json", help="also write the result to this file")
    o = a.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # our f32 training uses plain SGEMM
    dev, amp = torch.device(o.device), o.dtype == "bf16"
    model = MlaModel(o.model).to(dev)
    c, encode = model.c, load_tokenizer(o.model)
    bos = c.bos if c.bos is not None else 1
    res = {"model": o.model, "dtype": o.dtype, "torch": torch.__version__}
    ev = None
    if o.eval_text:
        ev = encode(read_text(o.eval_text, o.raw_newlines))[: o.eval_tokens]
        res.update(eval_tokens=len(ev), ctx=o.ctx)
    if o.check_logits:
        if ev is None: sys.exit("--check-logits needs --eval-text")
        if c.bos is None: sys.exit("config.json has no bos_token_id (the protocol starts windows with BOS)")
        res["eval_nll"] = nll(model, ev, o.ctx, bos, dev, amp)
    else:
        if not o.train: sys.exit("--train FILE is required (or --check-logits)")
        if c.bos is None: print("warning: no bos_token_id; sequences start with 1 as our trainer does", file=sys.stderr)
        train, val = split(o.train, encode, c.eos, o)
        S = o.seq
        nseq = len(train) // (S - 1)
        if nseq < 1: sys.exit(f"{len(train)} training tokens: fewer than one sequence")
        total = max(1, math.ceil((o.tokens if o.tokens else nseq * S) / (o.batch * S)))
        warm = jround(o.warmup * total)
        # As src/finetune/trainState.ts: no weight decay on 1-D weights (norm gains, biases), as HF's Trainer.
        groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=(0.9, 0.95), eps=1e-8)
        res.update(val_nll_before=nll(model, val, S, bos, dev, amp) if val else None, val_nll_after=None,
                   eval_nll_before=nll(model, ev, o.ctx, bos, dev, amp) if ev is not None else None, eval_nll_after=None)
        t0, losses, seqs = time.time(), [], sequences(train, S, bos, o.seed)
        for step in range(total):
            s = torch.tensor([next(seqs) for _ in range(o.batch)], device=dev)
            for g in opt.param_groups: g["lr"] = lr_at(step, total, o.lr, warm, o.decay_fraction)
            with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                logits = model(s[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, c.V), s[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip > 0: torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
            opt.step()
            losses.append(loss.item())
        res.update(steps=total, warmup_steps=warm, sequences=nseq, train_tokens=len(train), val_tokens=len(val),
                   seconds=round(time.time() - t0, 2), final_loss=losses[-1], losses=[round(x, 5) for x in losses])
        res["val_nll_after"] = nll(model, val, S, bos, dev, amp) if val else None
        res["eval_nll_after"] = nll(model, ev, o.ctx, bos, dev, amp) if ev is not None else None
    line = json.dumps(res)
    print(line)
    if o.json: open(o.json, "w").write(line + "\n")

if __name__ == "__main__":
    main()
