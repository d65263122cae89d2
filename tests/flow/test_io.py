"""Model folders: StarFlow.save_pretrained / from_pretrained, strictly and atomically."""
import json

import pytest
import torch

from starflow import StarFlow
from starflow.flow.io import CheckpointError, atomic_folder


def test_save_and_load_a_model_folder(make_model, tmp_path):
    model = make_model(dtype=torch.float32, learnable_self_denoiser=True, temporal_causal=1, shallow_block_local=True)
    model.save_pretrained(tmp_path / "m")
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["format"] == "starflow-model" and info["config"]["sos"] is True
    back = StarFlow.from_pretrained(tmp_path / "m")
    assert back.config == model.config and not back.training
    x, y = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 5)
    torch.testing.assert_close(back(x, y).z, model(x, y).z, atol=0, rtol=0)
    low = StarFlow.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16)
    assert low.deep.proj_in.weight.dtype == torch.bfloat16


def test_bad_model_folders_are_clear_errors(make_model, tmp_path):
    model = make_model(dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        StarFlow.from_pretrained(tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON"):
        StarFlow.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        StarFlow.from_pretrained(tmp_path / "m")


def test_a_failed_save_leaves_the_old_folder_whole(make_model, tmp_path):
    model = make_model(dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(tmp_path / "m") as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]          # no temporary folder left behind
