"""PyTorch baseline for bench/convert-7b.sh: the same joint-SVD MHA→MLA conversion of a Llama
checkpoint (uniform partial RoPE, rank per KV head), with torch.linalg.svd in float32 on the GPU and
safetensors IO, written as 5 GB shards. Prints one JSON line with the phase times.

usage: python3 bench/convert_7b_torch.py SRC_DIR OUT_DIR RANK ROPE_PAIRS
"""
import json, os, resource, sys, time
import torch
from safetensors import safe_open
from safetensors.torch import save_file

src, out, rank, R = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.time()
cfg = json.load(open(os.path.join(src, "config.json")))
H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
Dh = cfg.get("head_dim") or D // H
half = Dh // 2
pairs = [k * Dh // (2 * R) for k in range(R)]  # uniform, as mha2mla
rope_rows = sorted(pairs + [p + half for p in pairs])
nope_rows = [i for i in range(Dh) if i not in rope_rows]
shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
os.makedirs(out, exist_ok=True)
t_read = t_svd = t_write = 0.0
pending, pending_bytes, n_out = {}, 0, 0


def flush():
    global pending, pending_bytes, n_out, t_write
    if not pending:
        return
    t = time.time()
    n_out += 1
    save_file(pending, os.path.join(out, f"model-{n_out:05d}.safetensors"), metadata={"format": "pt"})
    t_write += time.time() - t
    pending, pending_bytes = {}, 0


def emit(name, tensor):
    global pending_bytes
    pending[name] = tensor.contiguous()
    pending_bytes += tensor.numel() * tensor.element_size()
    if pending_bytes > 5 * 2**30:
        flush()


layer_kv = {}
for shard in shards:
    t = time.time()
    with safe_open(os.path.join(src, shard), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    t_read += time.time() - t
    for name, w in tensors.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            prefix = name.split(".self_attn.")[0]
            layer_kv.setdefault(prefix, {})["k" if ".k_proj." in name else "v"] = w
            kv = layer_kv[prefix]
            if "k" in kv and "v" in kv:
                t = time.time()
                wk = kv["k"].cuda().float().view(Hkv, Dh, D)
                wv = kv["v"].cuda().float()
                k_rope = wk[:, rope_rows, :].reshape(-1, D)
                A = torch.cat([wk[:, nope_rows, :].reshape(-1, D), wv], 0)
                U, S, Vh = torch.linalg.svd(A, full_matrices=False)
                L = rank * Hkv
                down = Vh[:L]
                up = U[:, :L] * S[:L]
                nk = Hkv * len(nope_rows)
                torch.cuda.synchronize()
                t_svd += time.time() - t
                dt = kv["k"].dtype
                emit(prefix + ".self_attn.k_rope_proj.weight", k_rope.to(dt).cpu())
                emit(prefix + ".self_attn.kv_down_proj.weight", down.to(dt).cpu())
                emit(prefix + ".self_attn.k_up_proj.weight", up[:nk].to(dt).cpu())
                emit(prefix + ".self_attn.v_up_proj.weight", up[nk:].to(dt).cpu())
                del layer_kv[prefix]
        else:
            emit(name, w)
flush()
total = time.time() - t0
print(json.dumps({"tool": "pytorch", "torch": torch.__version__, "total_s": round(total, 2), "read_s": round(t_read, 2), "svd_s": round(t_svd, 2), "write_s": round(t_write, 2),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))
