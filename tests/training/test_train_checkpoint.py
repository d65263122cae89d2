import json

import pytest
import torch

from starflow.training import CheckpointManager, load_trained


def _w(v):
    return {"model": {"a": torch.full((2,), float(v))}}


def test_keep_last_and_latest(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        m.save(step, _w(step), {"step": step})
    assert [p.name for p in m.complete()] == ["ckpt-00000002", "ckpt-00000003"]
    weights, state = m.load(m.latest())
    assert state["step"] == 3 and torch.equal(weights["model"]["a"], torch.full((2,), 3.0))


def test_a_save_killed_midway_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, keep_last=3)
    m.save(5, _w(5), {"step": 5})

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        m.save(6, _w(6), {"step": 6})
    monkeypatch.undo()
    assert any(".tmp-" in p.name for p in tmp_path.iterdir())      # the partial write is there...
    assert m.latest().name == "ckpt-00000005"                        # ...but never picked up
    assert m.load(m.latest())[1]["step"] == 5
    m.clean_partial()
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())
    # a stale pointer (its folder removed) falls back to the newest complete checkpoint
    (tmp_path / "latest").write_text("ckpt-00000099")
    assert m.latest().name == "ckpt-00000005"


def test_resave_same_step_replaces(tmp_path):
    m = CheckpointManager(tmp_path)
    m.save(1, _w(1), {"step": 1})
    m.save(1, _w(7), {"step": 1})
    assert torch.equal(m.load(m.latest())[0]["model"]["a"], torch.full((2,), 7.0))
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["ckpt-00000001"]


def test_load_trained_reads_the_0_1_export(tmp_path):
    """starflow 0.1 exported config.json (0/1 booleans, the run's config with optim.bf16) + model.safetensors."""
    from safetensors.torch import save_file

    from starflow import ModelConfig, StarFlow

    cfg = ModelConfig.from_dict(dict(channel_size=1, img_size=4, patch_size=2, channels=32, head_dim=16, blocks=2,
                                     layers_per_block=[1], rope=False))
    model = StarFlow(cfg)
    old = {**cfg.to_dict(), "rope": 0, "sos": 0, "use_bias": 1}
    info = {"model": old, "conditioning": {"mode": "none"},
            "train": {"optim": {"max_steps": 3, "bf16": "false"}, "data": {"dataset": "digits"}}}
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text(json.dumps(info))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "final" / "model.safetensors"))
    loaded, tcfg = load_trained(tmp_path / "final")
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(loaded(x).z, model(x).z)
    assert tcfg.optim.max_steps == 3 and tcfg.optim.precision == "fp32" and tcfg.model["channels"] == 32
    with pytest.raises(FileNotFoundError, match="final/ folder"):
        load_trained(tmp_path)
