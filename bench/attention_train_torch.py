"""PyTorch peer of bench/attention-train.ts: causal scaled_dot_product_attention (bf16, the backend
PyTorch picks: FlashAttention-2 / cuDNN / efficient), forward and forward + backward, same shapes, GQA
through enable_gqa. One JSON line per (shape, pass).
SDPA_BACKENDS=default,flash,cudnn,efficient runs each named backend in turn (default: the one PyTorch
picks), to tell which kernel a "PyTorch SDPA" row stands for.
Usage: [SDPA_BACKENDS=…] python3 bench/attention_train_torch.py [B:T:H:Hkv:Dh,...]"""
import contextlib, json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
backends = os.environ.get("SDPA_BACKENDS", "default").split(",")

shapes = [tuple(int(x) for x in s.split(":")) for s in (sys.argv[1] if len(sys.argv) > 1 else "8:1024:9:3:64,8:2048:32:32:64,4:2048:32:32:128,1:8192:32:32:128").split(",")]
for B, T, H, Hkv, Dh in shapes:
    q = (torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16) * 0.5).requires_grad_()
    k = (torch.randn(B, Hkv, T, Dh, device="cuda", dtype=torch.bfloat16) * 0.5).requires_grad_()
    v = (torch.randn(B, Hkv, T, Dh, device="cuda", dtype=torch.bfloat16) * 0.5).requires_grad_()
    d = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16)
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
                print(json.dumps({"tool": "pytorch", "backend": backend, "pass": name, "B": B, "T": T, "H": H, "Hkv": Hkv, "Dh": Dh, "error": str(e).splitlines()[0][:200]}))
                continue
            ms = (time.perf_counter() - t0) / 10 * 1000
            print(json.dumps({"tool": "pytorch", "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "backend": backend, "pass": name, "B": B, "T": T, "H": H, "Hkv": Hkv, "Dh": Dh, "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}))
