"""PyTorch CPU baselines for bench/cpu-vs-torch.sh (same machine, same run, same thread count).
  eval DIR TEXT TOKENS CTX      perplexity protocol of mha2mla eval: [BOS] + (CTX-1)-token windows
  finetune DIR TEXT TOKENS SEQ BATCH   AdamW steps over SEQ-token sequences, batch BATCH
Prints one JSON line with tokens/s. Threads: torch.set_num_threads($THREADS, default 2)."""
import json, math, os, sys, time
import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
mode, d, text = sys.argv[1], sys.argv[2], sys.argv[3]
model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="sdpa")
ids = Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(open(text, encoding="utf-8").read(), add_special_tokens=False).ids
bos = model.config.bos_token_id if model.config.bos_token_id is not None else 1
if mode == "eval":
    n, ctx = int(sys.argv[4]), int(sys.argv[5])
    ids = ids[:n]
    model.eval()
    nll, count, t = 0.0, 0, time.time()
    with torch.no_grad():
        for s in range(0, len(ids), ctx - 1):
            w = torch.tensor([[bos] + ids[s:s + ctx - 1]])
            logits = model(w).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum").item()
            count += w.shape[1] - 1
    dt = time.time() - t
    print(json.dumps({"tool": "pytorch", "mode": "eval", "tokens": count, "seconds": round(dt, 2), "tokens_per_second": round(count / dt), "nll": nll / count, "threads": torch.get_num_threads()}))
else:
    n, seq, batch = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    steps = max(1, n // (seq * batch))
    seqs = [ids[i:i + seq] for i in range(0, len(ids) - seq, seq)]
    t = time.time()
    for s in range(steps):
        b = torch.tensor([seqs[(s * batch + j) % len(seqs)] for j in range(batch)])
        loss = model(b, labels=b).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    dt = time.time() - t
    tokens = steps * seq * batch
    print(json.dumps({"tool": "pytorch", "mode": "finetune", "steps": steps, "seconds": round(dt, 2), "tokens_per_second": round(tokens / dt), "threads": torch.get_num_threads()}))
