"""Issue 14, "data lost or corrupted": each fault reproduced on a tiny run, then the run is continued and must
end exactly where the uninterrupted one did (same curve, same evaluations once each, same final weights)."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from starflow.cli.main import main
from starflow.training import checkpoint as ckpt_module

from .faults import curve, die, evaluations, final_weights, in_child, kill_at_call, leftovers, metric_rows


def assert_same_run(run, reference):
    """What an interrupted and continued run must share with the uninterrupted one."""
    got, ref = metric_rows(run), metric_rows(reference)
    assert [c[0] for c in curve(got)] == list(range(1, 7))           # every step logged once
    np.testing.assert_allclose(np.array(curve(got)), np.array(curve(ref)), rtol=1e-5, atol=1e-7)
    assert [s for s, _ in evaluations(got)] == [s for s, _ in evaluations(ref)] == [4, 6]
    np.testing.assert_allclose([b for _, b in evaluations(got)], [b for _, b in evaluations(ref)], rtol=1e-5)
    a, b = final_weights(run), final_weights(reference)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert leftovers(run) == []


def _drop_after(run, step: int) -> None:
    """The run as a kill right after its checkpoint at `step` leaves it (rows after it stay in the log)."""
    shutil.rmtree(run / "final")
    for p in (run / "checkpoints").glob("ckpt-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    (run / "checkpoints" / "latest").write_text(f"ckpt-{step:08d}")


# ---- 1. a kill while metrics.jsonl is rewritten on --resume -------------------------------------------------
def test_a_kill_during_the_metrics_rewrite_of_a_resume_keeps_the_history(reference_run, copy_of, train_cli):
    run = copy_of(reference_run)
    _drop_after(run, 4)
    before = (run / "metrics.jsonl").read_bytes()

    def resume_killed_while_rewriting():
        def half_written(path, text):
            path.with_name(f".{path.name}.tmp-{os.getpid()}").write_text(text[:len(text) // 2])
        kill_at_call(ckpt_module, "atomic_write_text", 1, before=half_written,
                     when=lambda path, text: path.name == "metrics.jsonl")
        return main(train_cli(run, resume=True))

    assert in_child(resume_killed_while_rewriting) == (None, 9)
    assert (run / "metrics.jsonl").read_bytes() == before             # the history is all there
    assert any(p.name.startswith(".metrics.jsonl.tmp-") for p in run.iterdir())
    assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)


# ---- 2. a torn last row (a full disk or a kill while appending) -----------------------------------------------
def test_a_torn_last_row_is_dropped_with_a_warning_and_the_run_continues(reference_run, copy_of, train_cli):
    run = copy_of(reference_run)
    _drop_after(run, 4)
    rows = metric_rows(run)
    n = torch.load(run / "checkpoints" / "ckpt-00000004" / "state.pt", weights_only=True)["metrics_rows"]
    with open(run / "metrics.jsonl", "w") as f:   # the rows up to the checkpoint, then half of the next one
        f.writelines(json.dumps(r) + "\n" for r in rows[:n])
        f.write(json.dumps(rows[n])[:25])
    with pytest.warns(RuntimeWarning, match="last line was written only in part and is dropped"):
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)


def test_a_broken_row_inside_the_log_is_a_clear_error(reference_run, copy_of, train_cli, capsys):
    run = copy_of(reference_run)
    _drop_after(run, 4)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(train_cli(run, resume=True)) == 2
    assert "metrics.jsonl: line 2 is not a JSON row" in capsys.readouterr().err


# ---- 3. weights that become non-finite ------------------------------------------------------------------------
def test_weights_that_become_nan_stop_the_run_and_keep_the_last_good_checkpoint(train_cli, tmp_path, capsys,
                                                                                  monkeypatch):
    step = torch.optim.AdamW.step
    calls = {"n": 0}

    def overflowing(self, *a, **k):     # the third update overflows (finite loss and gradient before it)
        out = step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)
    run = tmp_path / "run"
    assert main(train_cli(run)) == 1
    err = capsys.readouterr().err
    assert "failed: the weights became NaN or infinite" in err and "at step 3" in err
    assert "the newest checkpoint is still ckpt-00000002" in err and "Traceback" not in err
    assert not (run / "final").exists()                                    # no all-NaN model exported
    assert (run / "checkpoints" / "latest").read_text() == "ckpt-00000002"
    assert [p.name for p in (run / "checkpoints").glob("ckpt-*")] == ["ckpt-00000002"]
    assert all(torch.isfinite(t).all() for t in load_file(run / "checkpoints" / "ckpt-00000002" /
                                                          "model.safetensors").values())
    rows = metric_rows(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]             # no row of NaN
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_a_loss_that_stays_non_finite_stops_the_run(train_cli, tmp_path, capsys):
    # lr=1e30: the first update makes the weights huge (finite); every later loss overflows and is skipped
    run = tmp_path / "run"
    assert main(train_cli(run, "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0",
                          "optim.nonfinite_patience=2")) == 1
    err = capsys.readouterr().err
    assert "non-finite for 2 steps in a row" in err and "no final/ model exported" in err
    assert not (run / "final").exists()


def test_an_infinite_learning_rate_is_refused_before_training(train_cli, tmp_path, capsys):
    assert main(train_cli(tmp_path / "run", "optim.lr=.inf")) == 2
    assert "need a finite optim.lr > 0" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- 4. the newest checkpoint lacks its EMA file ----------------------------------------------------------
def test_a_checkpoint_without_its_ema_file_gives_way_to_the_one_before(reference_run, copy_of, train_cli):
    run = copy_of(reference_run)
    shutil.rmtree(run / "final")
    (run / "checkpoints" / "ckpt-00000006" / "ema.safetensors").unlink()
    with pytest.warns(RuntimeWarning, match=r"ckpt-00000006 cannot be resumed from: .*ema.safetensors is missing, "
                                            r"although the run kept an EMA; falling back to ckpt-00000004"):
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)     # not the raw weights: the EMA of the uninterrupted run


def test_ema_turned_on_at_a_resume_is_said_and_none_usable_is_an_error(reference_run, copy_of, train_cli, tmp_path,
                                                                       capsys):
    plain = tmp_path / "plain"
    assert main(train_cli(plain, "optim.ema=0", "optim.max_steps=2")) == 0
    with pytest.warns(RuntimeWarning, match="was saved without an EMA: the EMA starts from the weights of step 2"):
        assert main(train_cli(plain, "optim.max_steps=4", resume=True)) == 0
    run = copy_of(reference_run)
    shutil.rmtree(run / "final")
    for p in (run / "checkpoints").glob("ckpt-*"):
        (p / "ema.safetensors").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(train_cli(run, resume=True)) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert not (run / "final").exists()


# ---- 5. the newest checkpoint's weights do not load -------------------------------------------------------
@pytest.mark.parametrize("broken", ["model.safetensors", "state.pt"])
def test_a_truncated_checkpoint_gives_way_to_the_one_before(reference_run, copy_of, train_cli, broken):
    run = copy_of(reference_run)
    shutil.rmtree(run / "final")
    f = run / "checkpoints" / "ckpt-00000006" / broken
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 3])
    with pytest.warns(RuntimeWarning, match=rf"ckpt-00000006 cannot be resumed from: .*{broken} cannot be read.*"
                                            r"falling back to ckpt-00000004"):
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)


def test_a_checkpoint_with_nan_weights_gives_way_to_the_one_before(reference_run, copy_of, train_cli):
    from safetensors.torch import save_file

    run = copy_of(reference_run)
    shutil.rmtree(run / "final")
    f = run / "checkpoints" / "ckpt-00000006" / "model.safetensors"
    sd = load_file(f)
    sd[next(iter(sd))].fill_(float("nan"))
    save_file(sd, f)
    with pytest.warns(RuntimeWarning, match="holds NaN or infinite values"):
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)


# ---- 7. a kill during the final/ export; resumes at the end --------------------------------------------------
def test_a_kill_during_the_export_leaves_nothing_behind_and_resumes_log_once(reference_run, copy_of, train_cli):
    from starflow.pipelines import loading

    run = copy_of(reference_run)
    shutil.rmtree(run / "final")       # the log holds the evaluation row the end of the run wrote before its export

    def export_killed():
        kill_at_call(loading, "write_model_files", 1, before=loading.write_model_files)   # written, not renamed
        return main(train_cli(run, resume=True))

    assert in_child(export_killed) == (None, 9)
    orphans = [p.name for p in run.iterdir() if p.name.startswith("final.tmp-")]
    assert len(orphans) == 1 and (run / orphans[0] / "flow" / "model.safetensors").exists()
    assert evaluations(metric_rows(run))[-1][0] == 6                  # the killed attempt's evaluation row
    for _ in range(3):                                                # ...and resumes at the end, again and again
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)                               # one evaluation row per step, no orphan


def test_an_export_killed_between_its_renames_keeps_the_old_folder(tmp_path):
    from starflow.flow.io import atomic_folder, clean_atomic_leftovers

    final = tmp_path / "final"
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("old")
    # the kill came after `final` was moved aside and before the new copy took its place
    (tmp_path / "final").rename(tmp_path / "final.old")
    (tmp_path / "final.tmp-999999999").mkdir()
    clean_atomic_leftovers(final)
    assert (final / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_running_writer_keeps_its_temporary_copy(tmp_path):
    from starflow.flow.io import clean_atomic_leftovers

    alive = tmp_path / f"final.tmp-{os.getppid()}"     # a live process's copy is not touched
    alive.mkdir()
    clean_atomic_leftovers(tmp_path / "final")
    assert alive.exists()


def test_die_kills(tmp_path):
    """The harness's kill is a real SIGKILL: nothing after it runs."""
    marker = tmp_path / "after"
    assert in_child(lambda: (die(), marker.write_text("ran"))[0]) == (None, 9)
    assert not marker.exists()


def test_a_child_killed_while_drawing_a_progress_bar_leaves_the_parents_bars_free():
    """A kill while the child holds tqdm's write lock (drawing a bar) must not leave the lock the parent's bars
    share taken: the random-moment kills once hung the resumed run in the parent for good this way."""
    from tqdm.auto import tqdm
    from tqdm.std import TqdmDefaultWriteLock

    tqdm.get_lock()                                # the shared lock exists before the fork, as in a test session

    def killed_while_drawing():
        tqdm.get_lock().acquire()
        die()

    assert in_child(killed_while_drawing) == (None, 9)
    shared = TqdmDefaultWriteLock.mp_lock
    assert shared.acquire(timeout=5), "the killed child left tqdm's shared lock taken"
    shared.release()
    with tqdm(total=1, disable=False) as bar:      # and a bar in the parent still draws
        bar.update()
