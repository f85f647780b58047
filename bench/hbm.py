"""The HBM bound the PyTorch peers' benches divide by: the card's own peak bandwidth from bench/hbm.json
(the table bench/hbm.ts reads for ours), or MHA2MLA_HBM_TBPS (TB/s)."""
import json
import os


def hbm_bound(device_name):
    """(bytes/s, label) for a torch.cuda.get_device_name() string."""
    forced = os.environ.get("MHA2MLA_HBM_TBPS")
    if forced and float(forced) > 0:
        return float(forced) * 1e12, f"{float(forced):g} TB/s, MHA2MLA_HBM_TBPS"
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hbm.json"), encoding="utf-8") as f:
        table = json.load(f)
    for card in table["cards"]:
        if card["match"] in device_name:
            return card["tbps"] * 1e12, f"{card['tbps']:g} TB/s, {device_name}"
    return table["default"] * 1e12, f"{table['default']:g} TB/s assumed: {device_name} is not in bench/hbm.json"
