"""A kill-at-random harness: one short run of `starflow train`, killed with SIGKILL again and again (in the middle
of a metrics row, of a checkpoint file, between a checkpoint and its `latest` pointer, of the metrics rewrite of
a resume, of the final export, and at random moments), each time continued with `--resume`. It must end with the
curve, evaluations and weights of the run nothing happened to, and nothing half-written left."""
from __future__ import annotations

import io
import json
import os
import random
import time

import pytest
import torch

from starflow.cli.main import main
from starflow.pipelines import loading
from starflow.training import checkpoint as ckpt_module

from .faults import in_child, kill_at_call
from .test_data_loss import assert_same_run


def _half_a_row(log, row):
    if log.write:
        with open(log.path, "a") as f:
            f.write(json.dumps(row)[:20])


def _half_a_file(obj, path, *a, **k):
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])


def _half_a_rewrite(path, text):
    path.with_name(f".{path.name}.tmp-{os.getpid()}").write_text(text[:len(text) // 2])


def _torn(run):
    text = (run / "metrics.jsonl").read_text()
    return not text.endswith("\n")


def _tmp_checkpoint(run):
    return any(".tmp-" in p.name for p in (run / "checkpoints").iterdir())


def _tmp_rewrite(run):
    return any(p.name.startswith(".metrics.jsonl.tmp-") for p in run.iterdir())


def _pointer_behind(run):
    names = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*"))
    return (run / "checkpoints" / "latest").read_text() != names[-1]


def _orphan_export(run):
    return any(p.name.startswith("final.tmp-") for p in run.iterdir())


# (what is killed, how to kill it in the child, what the kill leaves)
KILLS = [
    ("a metrics row, half written", lambda: kill_at_call(ckpt_module.MetricsLog, "append", 3, before=_half_a_row),
     _torn),
    ("a checkpoint's state.pt, half written", lambda: kill_at_call(torch, "save", 1, before=_half_a_file,
                                                                   when=lambda o, p, *a, **k: not hasattr(p, "write")),
     _tmp_checkpoint),
    ("the metrics rewrite of the resume", lambda: kill_at_call(ckpt_module, "atomic_write_text", 1,
                                                               before=_half_a_rewrite,
                                                               when=lambda p, t: p.name == "metrics.jsonl"),
     _tmp_rewrite),
    ("between a checkpoint and its latest pointer", lambda: kill_at_call(
        ckpt_module, "atomic_write_text", 1, when=lambda p, t: p.name == "latest"), _pointer_behind),
    ("the final export, its files written", lambda: kill_at_call(loading, "write_model_files", 1,
                                                                 before=loading.write_model_files), _orphan_export),
]


@pytest.mark.slow
def test_a_run_killed_at_each_write_ends_as_the_uninterrupted_one(reference_run, train_cli, tmp_path):
    run = tmp_path / "run"
    for what, fault, left in KILLS:
        resume = (run / "checkpoints").exists()

        def body(fault=fault, resume=resume):
            fault()
            return main(train_cli(run, resume=resume))

        assert in_child(body) == (None, 9), f"the kill in {what} did not happen"
        assert left(run), f"the kill in {what} did not leave what it should"
    assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)
    assert (run / "checkpoints" / "latest").read_text() == "ckpt-00000006"


@pytest.mark.slow
def test_a_run_killed_at_random_moments_ends_as_the_uninterrupted_one(reference_run, train_cli, tmp_path):
    t0 = time.monotonic()             # how long a whole run takes in a child, here and now
    assert in_child(lambda: main(train_cli(tmp_path / "timed"))) == (0, None)
    whole = time.monotonic() - t0
    run, rng, kills = tmp_path / "run", random.Random(14), 0
    for attempt in range(8):
        resume = (run / "checkpoints").exists()
        code, signal = in_child(lambda resume=resume: main(train_cli(run, resume=resume)),
                                kill_after=rng.uniform(0.05, 0.5) * whole)   # early: a kill lands even when
                                                                             # the machine got faster since
        if signal is None:
            assert code == 0
            break
        kills += 1
    assert kills >= 2
    if signal is not None:
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)
