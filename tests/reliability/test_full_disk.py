"""A full disk: while a metrics row is appended (a writer that refuses at a chosen byte), and while a checkpoint is
written (the kernel refuses past a file size, RLIMIT_FSIZE, in every writer: Python, torch's C++, safetensors'
Rust). The run stops with one clear line (exit 2), nothing is left torn, and once there is space again
`--resume` ends where the uninterrupted run did."""
from __future__ import annotations

import resource
import signal

import pytest

from starflow.cli.main import main
from starflow.training import checkpoint as ckpt_module
from starflow.training.checkpoint import CheckpointManager

from .faults import DiskFull, in_child, metric_rows
from .test_data_loss import assert_same_run


@pytest.mark.parametrize("truncate_fails", [False, True], ids=["torn-row-cut-back", "torn-row-left"])
def test_a_full_disk_while_a_metrics_row_is_appended(reference_run, train_cli, tmp_path, capsys, monkeypatch,
                                                     truncate_fails):
    run = tmp_path / "run"
    disk = DiskFull(budget=900, truncate_fails=truncate_fails)     # a byte inside the fifth row or so
    monkeypatch.setattr(ckpt_module, "os", disk.module)
    assert main(train_cli(run)) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl: No space left on device" in err and "--resume" in err and "Traceback" not in err
    assert disk.written == 900
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") != truncate_fails          # cut back to whole rows, or (a worse disk) left torn
    monkeypatch.undo()                                     # space again
    if truncate_fails:
        with pytest.warns(RuntimeWarning, match="written only in part and is dropped"):
            assert main(train_cli(run, resume=True)) == 0
    else:
        assert len(metric_rows(run)) >= 4
        assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)


def test_a_full_disk_while_a_checkpoint_is_written(reference_run, train_cli, tmp_path, capfd):
    run = tmp_path / "run"

    def disk_fills_at_the_second_checkpoint():
        save = CheckpointManager.save
        calls = {"n": 0}

        def filling(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 2:        # from now on no file may grow past 8 KiB: the weights do not fit
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
            return save(self, *a, **k)
        CheckpointManager.save = filling
        return main(train_cli(run))

    assert in_child(disk_fills_at_the_second_checkpoint) == (2, None)
    err = capfd.readouterr().err
    assert "could not write checkpoint ckpt-00000004" in err and "the newest checkpoint is still ckpt-00000002" in err
    assert "Traceback" not in err
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["ckpt-00000002", "latest"]   # the failed one removed whole
    assert (ck / "latest").read_text() == "ckpt-00000002"
    assert main(train_cli(run, resume=True)) == 0
    assert_same_run(run, reference_run)
