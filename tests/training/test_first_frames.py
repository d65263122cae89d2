"""data.first_frames: some steps of a video run train on the videos' first frames alone (images), as STARFlow-V
mixes images into its video training."""
import math

import pytest

from starflow.config import ConfigError
from starflow.training import load_train_config
from starflow.training.distributed import setup_distributed
from starflow.training.trainer import Progress, Trainer

TINY = ["model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1",
        "model.rope=true", "model.temporal_causal=1", "model.shallow_block_local=true", "model.cond_top_only=true",
        "model.seq_order=L2R", "data.dataset=moving_digits", "data.canvas=12", "data.num_frames=3",
        "data.num_videos=16", "data.condition=labels", "data.noise_std=0.2", "optim.batch_size=4",
        "optim.num_threads=1", "optim.precision=fp32", "log.progress=false", "log.sample_every=-1", "log.plot=false"]


def _trainer(tmp_path, *extra):
    cfg = load_train_config(None, [*TINY, f"log.out_dir={tmp_path / 'run'}", *extra])
    return Trainer(cfg, setup_distributed("none", "auto"))


def test_first_frame_steps_take_their_share_and_run_on_one_frame(tmp_path):
    tr = _trainer(tmp_path, "data.first_frames=0.5", "data.first_frames_batch=8")
    steps = [tr._step_items(s) for s in range(60)]
    first = [s for s in steps if s[2]]
    assert 15 <= len(first) <= 45
    assert all(len(idx) == n == 8 for idx, n, _ in first)
    assert all(len(idx) == n == 4 for idx, n, f in steps if not f)
    # the choice is a function of the step (a resumed run, another process count: the same steps)
    again = _trainer(tmp_path, "data.first_frames=0.5", "data.first_frames_batch=8")
    assert [again._step_items(s)[2] for s in range(60)] == [s[2] for s in steps]

    shapes = []
    forward = tr.wrapped.forward
    tr.wrapped.forward = lambda x, y, **kw: (shapes.append(tuple(x.shape)), forward(x, y, **kw))[1]
    for s in (next(i for i, v in enumerate(steps) if v[2]), next(i for i, v in enumerate(steps) if not v[2])):
        row, applied = tr.train_step(Progress(step=s))
        assert applied and math.isfinite(row["loss"])
    assert shapes[0][:2] == (8, 1) and shapes[1][:2] == (4, 3)          # (items, frames, latent...)
    assert shapes[0][2:] == shapes[1][2:]


def test_default_batch_keeps_the_token_count(tmp_path):
    tr = _trainer(tmp_path, "data.first_frames=0.3")
    assert tr.first_frames[1] == 4 * 3


def test_first_frames_needs_videos_and_a_share_below_one(tmp_path):
    with pytest.raises(ConfigError, match="first_frames must be in"):
        load_train_config(None, [*TINY, "data.first_frames=1.0"])
    digits = [a for a in TINY if not a.startswith(("data.dataset", "data.canvas", "data.num_frames", "data.num_videos",
                                                   "model.temporal", "model.shallow"))]
    cfg = load_train_config(None, [*digits, "data.dataset=digits", "data.first_frames=0.5",
                                   f"log.out_dir={tmp_path / 'd'}"])
    with pytest.raises(ConfigError, match="has no videos"):
        Trainer(cfg, setup_distributed("none", "auto"))
