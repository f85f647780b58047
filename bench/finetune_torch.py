"""PyTorch peer for the GPU fine-tuning benchmark (bench/finetune-gpu.sh): trains HF LlamaForCausalLM
from a local folder (e.g. `mha2mla synth --arch smollm-135m --dtype bf16 --out DIR`) on random token
batches and reports training throughput. float32 master weights on cuda, SDPA attention,
torch.autocast(bf16), fused AdamW (lr 1e-4, wd 0.01, betas 0.9/0.95), grad-norm clip 1.0, loss =
the model's own cross-entropy (labels = inputs, shifted inside the model). Tokens per step are
batch·seq, as `mha2mla finetune` counts them. MFU = 6·params·tokens/s / 989e12 (H200 dense bf16).
Nothing is downloaded (offline mode, local files only).

Usage: python3 bench/finetune_torch.py --model DIR --seq 512 --batch 4 --steps 20 --warmup-steps 3 \
           [--compile] [--checkpointing] [--json OUT.json]
Prints one JSON line (and writes it to --json). Under torchrun (`torchrun --nproc_per_node N
bench/finetune_torch.py …`) it trains with DistributedDataParallel: --batch is the global batch, each
rank takes batch / N rows of the same random batches (as `mha2mla finetune --gpus N` splits --batch),
and rank 0 reports the global tokens/s.
"""
import argparse, json, os, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
import transformers
from transformers import AutoConfig, LlamaForCausalLM

PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16

a = argparse.ArgumentParser(description="PyTorch fine-tuning throughput on random tokens")
a.add_argument("--model", required=True, help="HF Llama folder (config.json + safetensors)")
a.add_argument("--seq", type=int, default=512)
a.add_argument("--batch", type=int, default=4)
a.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
a.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (compilation, allocator)")
a.add_argument("--compile", action="store_true", help="torch.compile the model")
a.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (non-reentrant)")
a.add_argument("--seed", type=int, default=0)
a.add_argument("--json", help="write the result line to this file")
o = a.parse_args()
if not torch.cuda.is_available():
    raise SystemExit("needs a CUDA GPU")
ddp = "LOCAL_RANK" in os.environ
world, rank, local = 1, 0, 0
if ddp:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    world, rank = dist.get_world_size(), dist.get_rank()
    if o.batch % world:
        raise SystemExit(f"--batch {o.batch} does not split over {world} ranks")

torch.manual_seed(o.seed)
cfg = AutoConfig.from_pretrained(o.model, local_files_only=True)
model = LlamaForCausalLM.from_pretrained(o.model, config=cfg, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True).to(f"cuda:{local}")
model.config.use_cache = False
if o.checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.train()
params = sum(p.numel() for p in model.parameters())  # a tied LM head counts once
params_no_embed = params - model.get_input_embeddings().weight.numel()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, betas=(0.9, 0.95), eps=1e-8, fused=True)
wrapped = DistributedDataParallel(model, device_ids=[local]) if ddp else model
step_model = torch.compile(wrapped) if o.compile else wrapped

total = o.warmup_steps + o.steps
g = torch.Generator(device=f"cuda:{local}").manual_seed(o.seed)
# Every rank draws the same global batches and trains its rows of each.
per = o.batch // world
batches = torch.randint(0, cfg.vocab_size, (total, o.batch, o.seq), device=f"cuda:{local}", generator=g)[:, rank * per : (rank + 1) * per]


def step(ids):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = step_model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


t_warm = time.perf_counter()
for i in range(o.warmup_steps):
    step(batches[i])
torch.cuda.synchronize()
warm_s = time.perf_counter() - t_warm
t0 = time.perf_counter()
for i in range(o.warmup_steps, total):
    loss = step(batches[i])
torch.cuda.synchronize()
sec = time.perf_counter() - t0

tokens = o.steps * o.batch * o.seq
tps = tokens / sec
res = {
    "tool": "pytorch",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "gpu": torch.cuda.get_device_name(0),
    "model": o.model,
    "layers": cfg.num_hidden_layers,
    "params": params,
    "params_no_embed": params_no_embed,
    "dtype": "float32 master, bf16 autocast",
    "attn": model.config._attn_implementation,
    "compile": o.compile,
    "checkpointing": o.checkpointing,
    "seq": o.seq,
    "batch": o.batch,
    "steps": o.steps,
    "warmup_steps": o.warmup_steps,
    "warmup_seconds": round(warm_s, 2),
    "tokens": tokens,
    "seconds": round(sec, 3),
    "tokens_per_s": round(tps, 1),
    "ms_per_step": round(1000 * sec / max(1, o.steps), 2),
    "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),  # rank 0's
    "mfu": round(6 * params * tps / PEAK_BF16_FLOPS, 4),
    "final_loss": round(loss.item(), 4) if o.steps else None,
}
res["gpus"] = world
if ddp:
    res["gpu"] = f"{world} x {res['gpu']}"
    dist.destroy_process_group()
    if rank:
        raise SystemExit(0)
line = json.dumps(res)
print(line)
if o.json:
    with open(o.json, "w") as f:
        f.write(line + "\n")
