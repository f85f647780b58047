"""A synth folder (config.json + safetensors, no tokenizer) as an HF LlamaForCausalLM on the GPU in
bf16, for the PyTorch peers of the GPU benchmarks. Import from scripts run as python3 bench/X.py."""
import glob, os
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, LlamaForCausalLM


def load_synth_llama(d):
    """(model in eval mode, its config) from folder d."""
    cfg = AutoConfig.from_pretrained(d)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    state = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        state.update(load_file(f, device="cuda"))
    model.load_state_dict(state, strict=False)
    return model.eval(), cfg
