"""PyTorch baseline for the GPU eval throughput in docs/benchmarks.md: HF LlamaForCausalLM from a synth
folder (bf16 weights, SDPA attention), forward over WINDOWS windows of CTX tokens with a cross-entropy
loss, as `mha2mla eval --ctx CTX` does, BATCH windows per forward (default 1). Prints one JSON line.
With PROFILE=1 in the environment, a torch.profiler table of the timed forwards' CUDA kernels goes
to stderr (the peer's side of an eval profile; the timing then includes the profiler's overhead).
Usage: python3 bench/eval_torch.py DIR CTX WINDOWS [BATCH]"""
import json, os, sys, time
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
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) if os.environ.get("PROFILE") == "1" else None
    if prof:
        prof.__enter__()
    t0 = time.perf_counter()
    for w in range(0, windows, batch):
        model(ids[w : w + batch], labels=ids[w : w + batch])
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    if prof:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90), file=sys.stderr)
print(json.dumps({"tool": "pytorch", "torch": torch.__version__, "dtype": "bfloat16", "attn": model.config._attn_implementation, "ctx": ctx, "batch": batch, "tokens": windows * ctx, "seconds": round(sec, 2), "tokens_per_s": round(windows * ctx / sec, 1)}))
