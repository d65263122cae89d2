"""A tiny uninterrupted training run to compare interrupted ones with, and tiny pipeline folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from starflow.cli.main import main

from .faults import empty_config, train_argv

# six steps of the tiny digits model, a checkpoint every two, EMA, evaluations at step 4 (in the loop, before
# its checkpoint) and at the end (after the last checkpoint, before the export)
RUN = ("optim.max_steps=6", "log.ckpt_every=2", "log.keep_last=5", "optim.ema=0.9", "log.eval_every=4")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The run nothing happened to."""
    root = tmp_path_factory.mktemp("reference")
    assert main(train_argv(empty_config(root), root / "run", *RUN)) == 0
    return root / "run"


@pytest.fixture
def copy_of(tmp_path):
    """A copy of a run folder to break (the reference stays untouched)."""
    def copy(run: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(run, tmp_path / name))
    return copy


@pytest.fixture
def train_cli(tmp_path):
    """argv of `starflow train` with the RUN settings into `out` (extra overrides appended)."""
    config = empty_config(tmp_path / "config")
    return lambda out, *extra, resume=False: train_argv(config, out, *RUN, *extra, resume=resume)
