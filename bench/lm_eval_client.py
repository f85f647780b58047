"""lm-evaluation-harness's `local-completions` client against a running `mha2mla serve`: the remote
tokenizer (/tokenizer_info, /tokenize, /detokenize), log-likelihood requests (echo + logprobs, as
lm-eval sends them) and generation requests, through lm-eval's own code. Prints each answer and the
log-likelihoods, which tests can set beside `mha2mla eval`'s. Needs `lm_eval` importable (pip install
lm_eval, or its wheel unpacked on PYTHONPATH) and the server up.

Usage: python3 bench/lm_eval_client.py URL MODEL_NAME [MAX_LENGTH] [BATCH_SIZE: prompts per request]
  e.g. mha2mla serve stories260K --port 8137 &  python3 bench/lm_eval_client.py http://127.0.0.1:8137 stories260K 512
"""
import json
import sys

from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

url, name = sys.argv[1], sys.argv[2]
max_length = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
lm = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=name, max_length=max_length, num_concurrent=4, batch_size=batch)
print("tokenizer backend:", lm.tokenizer_backend)
pairs = [("Once upon a time, there was a little", " girl"), ("Once upon a time, there was a little", " dog"), ("The sun was", " hot and bright.")]
ll = lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)])
gen = lm.generate_until([Instance(request_type="generate_until", doc={}, arguments=("Once upon a time", {"until": ["."], "max_gen_toks": 24}), idx=0)])
print(json.dumps({"loglikelihood": [{"context": c, "continuation": x, "logprob": r[0], "greedy": r[1]} for (c, x), r in zip(pairs, ll)], "generate_until": gen}, indent=1))
