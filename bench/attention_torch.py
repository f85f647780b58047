"""PyTorch reference for bench/attention.ts: causal scaled_dot_product_attention in float32 (and bf16) on the GPU,
same shapes; one JSON line per (dtype, T). Usage: python3 bench/attention_torch.py [1024,4096,16384] [32] [128]"""
import json, sys, time
import torch
import torch.nn.functional as F

lengths = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1024,4096,16384").split(",")]
H = int(sys.argv[2]) if len(sys.argv) > 2 else 32
Dh = int(sys.argv[3]) if len(sys.argv) > 3 else 128
for T in lengths:
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(1, H, T, Dh, device="cuda", dtype=dtype) * 0.5 for _ in range(3))
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize()
        reps = 2 if T >= 16384 else 5
        t0 = time.perf_counter()
        for _ in range(reps):
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / reps * 1000
        flops = 4 * (T * T / 2) * H * Dh
        print(json.dumps({"tool": "pytorch", "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "T": T, "H": H, "Dh": Dh, "ms": round(ms, 2), "tflops": round(flops / ms / 1e9, 2)}))
