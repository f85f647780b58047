"""PyTorch baseline for the GPU eval throughput in docs/benchmarks.md: HF LlamaForCausalLM from a synth
folder (bf16 weights, SDPA attention), forward over WINDOWS windows of CTX tokens with a cross-entropy
loss, as `mha2mla eval --ctx CTX` does, BATCH windows per forward (default 1). Prints one JSON line.
Usage: python3 bench/eval_torch.py DIR CTX WINDOWS [BATCH]"""
import json, sys, time
import torch
from torch_synth import load_synth_llama

d, ctx, windows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
model, cfg = load_synth_llama(d)
g = torch.Generator(device="cuda").manual_seed(0)
ids = torch.randint(3, 500, (windows, ctx), device="cuda", generator=g)
with torch.no_grad():
    model(ids[:1], labels=ids[:1])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for w in range(0, windows, batch):
        model(ids[w : w + batch], labels=ids[w : w + batch])
    torch.cuda.synchronize()
sec = time.perf_counter() - t0
print(json.dumps({"tool": "pytorch", "torch": torch.__version__, "dtype": "bfloat16", "attn": model.config._attn_implementation, "ctx": ctx, "batch": batch, "tokens": windows * ctx, "seconds": round(sec, 2), "tokens_per_s": round(windows * ctx / sec, 1)}))
