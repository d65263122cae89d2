"""A tiny trained digits model (a few steps of a ~20k-parameter flow) shared by the evaluation tests."""
from __future__ import annotations

import pytest

from starflow.training import load_train_config, train

TINY_RUN = ["model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1",
            "model.patch_size=2", "model.rope=0", "data.dataset=digits", "data.condition=labels",
            "data.dequantize=true", "data.gaussianize=true", "optim.lr=3e-3", "optim.warmup_steps=2",
            "optim.max_steps=4", "optim.batch_size=16", "optim.num_threads=1", "optim.bf16=false", "optim.ema=0.5",
            "log.log_every=1", "log.progress=false", "log.sample_every=-1", "log.plot=false", "log.eval_draws=2",
            "log.eval_max_items=24"]


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """(the trained model folder, the training run's own held-out bits/dim: 24 items, 2 draws)."""
    out = tmp_path_factory.mktemp("tiny_run")
    result = train(load_train_config(None, TINY_RUN + [f"log.out_dir={out}"]))
    return result.checkpoint_dir, result.test_bpd
