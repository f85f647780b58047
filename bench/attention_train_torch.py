"""PyTorch peer of bench/attention-train.ts: causal scaled_dot_product_attention (bf16, the backend
PyTorch picks: FlashAttention-2 / cuDNN / efficient), forward and forward + backward, same shapes, GQA
through enable_gqa. One JSON line per (shape, pass).
SDPA_BACKENDS=default,flash,cudnn,efficient runs each named backend in turn (default: the one PyTorch
picks), to tell which kernel a "PyTorch SDPA" row stands for. SDPA_LAYOUT=bshd lays q, k, v out as
[B, T, H, Dh] in memory (transposed views, as HF's attention and our kernels hold them) instead of
contiguous [B, H, T, Dh].
Usage: [SDPA_BACKENDS=…] [SDPA_LAYOUT=bhsd|bshd] python3 bench/attention_train_torch.py [B:T:H:Hkv:Dh,...]"""
import contextlib, json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
backends = os.environ.get("SDPA_BACKENDS", "default").split(",")
layout = os.environ.get("SDPA_LAYOUT", "bhsd")


def tensor(B, H, T, Dh, scale=0.5):
    """Logical [B, H, T, Dh], stored in `layout` order."""
    x = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16) if layout == "bhsd" else torch.randn(B, T, H, Dh, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    return x * scale

shapes = [tuple(int(x) for x in s.split(":")) for s in (sys.argv[1] if len(sys.argv) > 1 else "8:1024:9:3:64,8:2048:32:32:64,4:2048:32:32:128,1:8192:32:32:128").split(",")]
for B, T, H, Hkv, Dh in shapes:
    q, k, v = (tensor(B, h, T, Dh).requires_grad_() for h in (H, Hkv, Hkv))
    d = tensor(B, H, T, Dh, scale=1.0)
    fwd_flops = 4 * B * (T * T / 2) * H * Dh

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)

    def both():
        o = forward()
        torch.autograd.grad(o, (q, k, v), d)

    for backend in backends:
        for name, fn, flops in (("forward", lambda: forward(), fwd_flops), ("forward+backward", both, 3.5 * fwd_flops)):
            try:
                with (sdpa_kernel(BACKENDS[backend]) if backend in BACKENDS else contextlib.nullcontext()), (torch.no_grad() if name == "forward" else torch.enable_grad()):
                    fn()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(10):
                        fn()
                    torch.cuda.synchronize()
            except RuntimeError as e:
                print(json.dumps({"tool": "pytorch", "backend": backend, "layout": layout, "pass": name, "B": B, "T": T, "H": H, "Hkv": Hkv, "Dh": Dh, "error": str(e).splitlines()[0][:200]}))
                continue
            ms = (time.perf_counter() - t0) / 10 * 1000
            print(json.dumps({"tool": "pytorch", "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "backend": backend, "layout": layout, "pass": name, "B": B, "T": T, "H": H, "Hkv": Hkv, "Dh": Dh, "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}))
