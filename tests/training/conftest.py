"""Tiny configs shared by the training tests (a few steps of a ~20k-parameter flow on the digits)."""
from __future__ import annotations

import pytest

from starflow.training import load_train_config

TINY_MODEL = ["model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1",
              "model.patch_size=2", "model.rope=False"]


def tiny_overrides(out_dir, *extra: str) -> list[str]:
    return TINY_MODEL + [
        "data.dataset=digits", "data.condition=labels", "data.dequantize=true", "data.caption_dropout=0.2",
        "optim.lr=3e-3", "optim.warmup_steps=2", "optim.max_steps=6", "optim.batch_size=16",
        "optim.num_threads=1", "optim.precision=fp32", f"log.out_dir={out_dir}", "log.log_every=1", "log.progress=false",
        "log.sample_every=-1", "log.plot=false", "log.eval_draws=1", "log.eval_max_items=32",
    ] + list(extra)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str, out: str = "run"):
        return load_train_config(None, tiny_overrides(tmp_path / out, *extra))
    return make


def _losses(result) -> list[float]:
    return [m["loss"] for m in result.metrics if "loss" in m]


@pytest.fixture
def losses():
    """result -> the per-step training losses of its metrics."""
    return _losses


@pytest.fixture
def tiny_args(tmp_path):
    """(out folder name, extra overrides) -> the override list (for processes launched by a test)."""
    return lambda out, *extra: tiny_overrides(tmp_path / out, *extra)
