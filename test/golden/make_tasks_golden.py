#!/usr/bin/env python3
"""Golden benchmark-task predictions for stories260K, from PyTorch + transformers.

Same parsing and scoring rules as src/eval/tasks (DESIGN.md, multiple-choice protocol), written
independently: input = [BOS] + tokens(context + continuation), continuation tokens = those past
len(tokens(context)), score = sum of their log-probs; acc = argmax, acc_norm = argmax of score /
len(continuation in characters); LAMBADA: greedy hit and log-prob of " last word".
Run on the GPU machine:  python3 test/golden/make_tasks_golden.py --data-dir DIR [--limit 200]
Writes fixtures/golden/tasks_stories260K.json.
"""
import argparse, bz2, json, math, os
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def instruction_items(path, kind, limit):
    label = "Answer" if kind == "answer" else "Solution"
    head = f"Please choose the correct {kind} to the question: "
    sep = " " if kind == "answer" else "\n\n"
    out = []
    for i, it in enumerate(json.load(open(path, encoding="utf-8"))):
        if len(out) >= limit:
            break
        text = it["instruction"]
        first = text.index(f"\n\n{label}1: ")
        end = text.rindex("\n\nAnswer format:")
        question = text[len(head):first]
        rest = text[first + 2:end]
        choices, n = [], 1
        while True:
            rest = rest[len(f"{label}{n}: "):]
            nxt = rest.find(f"{sep}{label}{n + 1}: ")
            if nxt < 0:
                choices.append(" " + rest)
                break
            choices.append(" " + rest[:nxt])
            rest = rest[nxt + len(sep):]
            n += 1
        gold = int(it["answer"][len(kind):]) - 1
        out.append((f"Question: {question}\nAnswer:", choices, gold))
    return out


def hellaswag_items(path, limit):
    lines = bz2.open(path, "rt", encoding="utf-8").read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(lines[i * 6], [" " + e for e in lines[i * 6 + 2:i * 6 + 6]], int(lines[i * 6 + 1])) for i in range(min(limit, len(lines) // 6))]


def lambada_items(path, limit):
    out = []
    for line in open(path, encoding="utf-8"):
        if len(out) >= limit:
            break
        if not line.strip():
            continue
        t = json.loads(line)["text"]
        cut = t.rindex(" ")
        out.append((t[:cut], t[cut:]))
    return out


def loglik(model, tok, context, cont):
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    full = tok(context + cont, add_special_tokens=False)["input_ids"]
    c, n = min(len(ctx), len(full)), len(full)
    if c == n:
        return 0.0, True
    inp = torch.tensor([[tok.bos_token_id] + full[:-1]])
    with torch.no_grad():
        lp = torch.log_softmax(model(inp).logits[0].double(), -1)
    rows = torch.arange(c, n)
    target = torch.tensor(full[c:])
    return float(lp[rows, target].sum()), bool((lp[rows].argmax(-1) == target).all())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "fixtures", "golden", "tasks_stories260K.json"))
    a = ap.parse_args()
    torch.set_num_threads(8)
    d = os.path.join(ROOT, "fixtures", "models", "stories260K")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    res = {"limit": a.limit, "tasks": {}}
    choice_tasks = {
        "arc-easy": lambda: instruction_items(os.path.join(a.data_dir, "ARC-Easy.test.json"), "answer", a.limit),
        "arc-challenge": lambda: instruction_items(os.path.join(a.data_dir, "ARC-Challenge.test.json"), "answer", a.limit),
        "piqa": lambda: instruction_items(os.path.join(a.data_dir, "piqa.test.json"), "solution", a.limit),
        "hellaswag": lambda: hellaswag_items(os.path.join(a.data_dir, "hellaswag_val_full.txt.bz2"), a.limit),
    }
    for name, load in choice_tasks.items():
        preds = []
        for ctx, choices, gold in load():
            scores = [loglik(model, tok, ctx, ch)[0] for ch in choices]
            acc = max(range(len(scores)), key=lambda i: (scores[i], -i))
            norm = [s / len(ch) for s, ch in zip(scores, choices)]
            acc_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
            preds.append({"acc": acc, "acc_norm": acc_norm, "gold": gold, "scores": scores})
        n = len(preds)
        res["tasks"][name] = {"n": n, "acc": sum(p["acc"] == p["gold"] for p in preds) / n, "acc_norm": sum(p["acc_norm"] == p["gold"] for p in preds) / n, "predictions": preds}
        print(name, res["tasks"][name]["acc"], res["tasks"][name]["acc_norm"], flush=True)
    preds = []
    for ctx, target in lambada_items(os.path.join(a.data_dir, "lambada_test.jsonl"), a.limit):
        lp, greedy = loglik(model, tok, ctx, target)
        preds.append({"greedy": greedy, "logprob": lp})
    n = len(preds)
    res["tasks"]["lambada"] = {"n": n, "acc": sum(p["greedy"] for p in preds) / n, "ppl": math.exp(-sum(p["logprob"] for p in preds) / n), "predictions": preds}
    print("lambada", res["tasks"]["lambada"]["acc"], res["tasks"]["lambada"]["ppl"])
    json.dump(res, open(a.out, "w"))


if __name__ == "__main__":
    main()
