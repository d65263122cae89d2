"""benchmarks/official_baseline.py: the official Model is built from the config the way the official set-up does."""
import importlib.util
import types
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "official_baseline.py"


def _load():
    spec = importlib.util.spec_from_file_location("official_baseline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_maps_onto_the_official_constructor(make_model):
    base = _load()
    seen = {}

    class Model(torch.nn.Module):
        def __init__(self, **kw):
            super().__init__()
            seen.update(kw)

    cfg = make_model(dtype=torch.float32).config.to_dict()
    base.build_official(types.SimpleNamespace(Model=Model), {**cfg, "layers_per_block": "1 1 2"})
    assert seen["num_blocks"] == 3 and seen["layers_per_block"] == [1, 1, 2]
    assert (seen["in_channels"], seen["img_size"], seen["txt_dim"]) == (cfg["channel_size"], cfg["img_size"], 5)
    assert seen["use_checkpoint"] == 0 and seen["use_mm_attn"] == 0 and seen["top_block_channels"] is None


def test_needs_an_official_checkout(tmp_path):
    with pytest.raises(SystemExit, match="transformer_flow.py"):
        _load().main(["--code", str(tmp_path), "--model", str(tmp_path / "m.pt")])
