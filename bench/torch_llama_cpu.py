"""PyTorch CPU baseline without transformers (for machines with only Debian's python3-torch): a plain
Llama (RMSNorm, rotate-half RoPE, GQA attention, SwiGLU; tied or untied head) built from config.json and
model.safetensors (read with numpy), then the same two workloads as bench/cpu_torch.py on random token
ids (throughput only):
  eval DIR TOKENS CTX             windows of CTX tokens, no grad
  finetune DIR TOKENS SEQ BATCH   AdamW (0.9, 0.95), clip 1.0
Prints one JSON line. Threads: torch.set_num_threads($THREADS, default 2)."""
import json, os, struct, sys, time
import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
mode, d = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(d, "config.json")))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        raw = np.frombuffer(data[a:b], dtype=np.uint16 if e["dtype"] == "BF16" else np.float32)
        t = torch.from_numpy((raw.astype(np.uint32) << 16).view(np.float32)) if e["dtype"] == "BF16" else torch.from_numpy(raw.copy())
        out[name] = t.reshape(e["shape"]).float()
    return out


files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
W = {}
for f in files:
    W.update(read_safetensors(os.path.join(d, f)))
H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
Dh = cfg.get("head_dim") or D // H
eps = cfg.get("rms_norm_eps", 1e-5)
theta = cfg.get("rope_theta", 10000.0)
L = cfg["num_hidden_layers"]
V = cfg["vocab_size"]
params = {k: torch.nn.Parameter(v) for k, v in W.items()}
head = params.get("lm_head.weight", params["model.embed_tokens.weight"])


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


def forward(ids):
    B, T = ids.shape
    inv = 1.0 / theta ** (torch.arange(0, Dh, 2).float() / Dh)
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    mask = torch.full((T, T), float("-inf")).triu(1)
    x = params["model.embed_tokens.weight"][ids]
    for l in range(L):
        p = f"model.layers.{l}."
        y = rms(x, params[p + "input_layernorm.weight"])
        q = (y @ params[p + "self_attn.q_proj.weight"].T).view(B, T, H, Dh).transpose(1, 2)
        k = (y @ params[p + "self_attn.k_proj.weight"].T).view(B, T, Hkv, Dh).transpose(1, 2)
        v = (y @ params[p + "self_attn.v_proj.weight"].T).view(B, T, Hkv, Dh).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / Dh**0.5 + mask, -1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, H * Dh) @ params[p + "self_attn.o_proj.weight"].T
        y = rms(x, params[p + "post_attention_layernorm.weight"])
        g = y @ params[p + "mlp.gate_proj.weight"].T
        u = y @ params[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ params[p + "mlp.down_proj.weight"].T
    return rms(x, params["model.norm.weight"]) @ head.T


g = torch.Generator().manual_seed(0)
if mode == "eval":
    n, ctx = int(sys.argv[3]), int(sys.argv[4])
    windows = max(1, n // (ctx - 1))
    t = time.time()
    with torch.no_grad():
        for _ in range(windows):
            ids = torch.randint(3, V, (1, ctx), generator=g)
            logits = forward(ids)[0, :-1]
            F.cross_entropy(logits, ids[0, 1:])
    dt = time.time() - t
    print(json.dumps({"tool": f"pytorch {torch.__version__} (plain Llama, no transformers)", "mode": "eval", "tokens": windows * (ctx - 1), "seconds": round(dt, 2), "tokens_per_second": round(windows * (ctx - 1) / dt), "threads": torch.get_num_threads()}))
else:
    n, seq, batch = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    steps = max(1, n // (seq * batch))
    t = time.time()
    for _ in range(steps):
        ids = torch.randint(3, V, (batch, seq), generator=g)
        logits = forward(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
    dt = time.time() - t
    print(json.dumps({"tool": f"pytorch {torch.__version__} (plain Llama, no transformers)", "mode": "finetune", "steps": steps, "seconds": round(dt, 2), "tokens_per_second": round(steps * seq * batch / dt), "threads": torch.get_num_threads()}))
