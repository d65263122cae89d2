"""benchmarks/official_baseline.py: the official Model is built from the config the way the official set-up does."""
import types

import pytest
import torch

from .fake_official import load_script, write_checkout


def _load():
    return load_script("official_baseline")


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


def test_training_step_with_and_without_autocast(make_model, tmp_path, capsys, monkeypatch):
    import json
    import sys
    model = make_model(dtype=torch.float32, img_size=4, txt_size=3, txt_dim=5)
    args = write_checkout(model, tmp_path, monkeypatch) + ["--parts", "train", "--repeats", "1"]
    assert _load().main(args + ["--autocast"]) == 0
    # its one-process group goes with it: a later two-process run in this process must not find it
    assert not torch.distributed.is_initialized()
    res = json.loads(capsys.readouterr().out)
    assert res["train_step_ms"] > 0 and res["train_step_autocast_ms"] > 0
    autocast = sys.modules["transformer_flow"].AUTOCAST
    assert autocast == [False, False, True, True]       # warm-up + one timed step, each way
    monkeypatch.delitem(sys.modules, "transformer_flow")
    assert _load().main(args) == 0
    assert "train_step_autocast_ms" not in json.loads(capsys.readouterr().out)


def _fake_checkout(make_model, tmp_path, monkeypatch):
    model = make_model(dtype=torch.float32, img_size=4, txt_size=3, txt_dim=5)
    return write_checkout(model, tmp_path, monkeypatch) + ["--repeats", "1"]


def test_bf16_runs_every_part_under_autocast(make_model, tmp_path, capsys, monkeypatch):
    import json
    import sys
    args = _fake_checkout(make_model, tmp_path, monkeypatch)
    assert _load().main(args + ["--parts", "forward,train", "--dtype", "bf16", "--autocast"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dtype"] == "bf16" and res["precision"] == "bf16 autocast" and res["device"] == "cpu"
    # the training step is the autocast one, under its usual name; no separate autocast figure
    assert res["forward_ms"] > 0 and res["train_step_ms"] > 0 and "train_step_autocast_ms" not in res
    assert sys.modules["transformer_flow"].AUTOCAST == [True] * 4     # forward + step, warm-up + timed each
    with pytest.raises(SystemExit):
        _load().main(args + ["--dtype", "fp16"])


@pytest.mark.gpu
def test_on_cuda(make_model, tmp_path, capsys, monkeypatch):
    import json
    args = _fake_checkout(make_model, tmp_path, monkeypatch)
    assert _load().main(args + ["--parts", "forward,train", "--device", "cuda"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["device"] == "cuda" and res["forward_ms"] > 0 and res["train_step_ms"] > 0
