"""PyTorch peer for bench/decode.sh: HF transformers LlamaForCausalLM from a synth folder (bf16
weights and bf16 KV cache, SDPA attention, eager, the default DynamicCache), measured as
dist/bench/decode.js measures ours: prefill CTX random tokens for one sequence, copy its cache to B
sequences, then time STEPS single-token forwards whose next token comes from the logits (each step
reads the logits back, so GPU work is included). Prints one markdown row per (context, batch).
SDPA's cuDNN backend is switched off: torch 2.11 picks it by default and it plans a new graph for every
key length, about 11 ms of CPU per layer and step (decode then runs at ~20 tokens/s whatever the
GPU); SDPA_CUDNN=1 keeps the default to see that.
Usage: python3 bench/decode_torch.py DIR CONTEXTS BATCHES STEPS   (e.g. DIR 1024,4096 1,32 16)"""
import os, sys, time
import torch
import transformers
from transformers import DynamicCache
from torch_synth import load_synth_llama
from hbm import hbm_bound

d, contexts, batches, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if os.environ.get("SDPA_CUDNN") != "1":
    torch.backends.cuda.enable_cudnn_sdp(False)
model, cfg = load_synth_llama(d)
name = os.path.basename(d.rstrip("/"))
kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
# Bytes a step must read: every weight but the embedding table (a gather), plus the bf16 cache.
weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - model.model.embed_tokens.weight.numel() * 2
if cfg.tie_word_embeddings:
    weight_bytes += model.model.embed_tokens.weight.numel() * 2
hbm_bytes_per_s = hbm_bound(torch.cuda.get_device_name())[0]  # the card's own peak (bench/hbm.json)
size = lambda b: f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
g = torch.Generator(device="cuda").manual_seed(0)
for ctx in map(int, contexts.split(",")):
    for B in map(int, batches.split(",")):
        need = kv_per_token * 2 * ctx * B * 1.15
        free = torch.cuda.mem_get_info()[0]
        cache_bytes = kv_per_token * 2 * ctx * B
        label = f"| {name} | mha, HF transformers {transformers.__version__} (torch {torch.__version__}, SDPA{'' if torch.backends.cuda.cudnn_sdp_enabled() else ' without cuDNN'}) | {ctx} | {B} | {kv_per_token} | | {size(cache_bytes)} |"
        if need > free - 2 * 2**30:
            print(f"{label} does not fit | |", flush=True)
            continue
        with torch.no_grad():
            cache = DynamicCache(config=cfg)
            ids = torch.randint(3, cfg.vocab_size, (1, ctx), device="cuda", generator=g)
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            if B > 1:
                cache.batch_repeat_interleave(B)
            tok = torch.full((B, 1), 5, device="cuda", dtype=torch.long)

            def step():
                global tok
                logits = model(tok, past_key_values=cache, use_cache=True).logits[:, -1, :64]
                tok = (3 + logits.float().argmax(-1, keepdim=True) % 60).cpu().cuda()

            step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            sec = time.perf_counter() - t0
        bound = (weight_bytes + cache_bytes) / hbm_bytes_per_s
        print(f"{label} {steps * B / sec:.1f} | {100 * bound * steps / sec:.0f}% |", flush=True)
        del cache
        torch.cuda.empty_cache()
