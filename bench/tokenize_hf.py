"""The peer of bench/tokenize.ts: the Rust tokenizers (what transformers runs) encoding the same text whole.
Run: python3 bench/tokenize_hf.py TOKENIZER_DIR TEXT_FILE [CHARS=250000] [REPEATS=3]   (needs `tokenizers`)"""
import os
import sys
import time

from tokenizers import Tokenizer

dir_, file = sys.argv[1], sys.argv[2]
chars = int(sys.argv[3]) if len(sys.argv) > 3 else 250_000
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
text = open(file, encoding="utf-8").read()[:chars]
tok = Tokenizer.from_file(os.path.join(dir_, "tokenizer.json"))
best, ids = float("inf"), []
for _ in range(repeats):
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    best = min(best, (time.perf_counter() - t0) * 1000)
nbytes = len(text.encode("utf-8"))
print(f"| Rust tokenizers (one call) | {len(ids)} | {best:.0f} | {len(ids) / best * 1000:.0f} | {nbytes / best / 1000:.3f} |")
