"""A process of a two-process run that freezes (SIGSTOP) must not hold the other for half an hour: the process
group's timeout is `dist.timeout_s`, and the waiting process stops with one line saying what happened."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from starflow.cli.main import main
from starflow.training import loop
from starflow.training.trainer import Trainer

from .faults import fresh_std_streams


def test_the_timeout_setting_reaches_the_process_group(train_cli, tmp_path, monkeypatch):
    seen = []
    real = loop.setup_distributed

    def spy(strategy, backend, timeout_s):
        seen.append(timeout_s)
        return real(strategy, backend, timeout_s)
    monkeypatch.setattr(loop, "setup_distributed", spy)
    assert main(train_cli(tmp_path / "a", "optim.max_steps=1", "dist.timeout_s=7.5")) == 0
    assert main(train_cli(tmp_path / "b", "optim.max_steps=1")) == 0
    assert seen == [7.5, 600.0]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_frozen_process_stops_the_other_after_dist_timeout_s(train_cli, tmp_path, capfd):
    port, pids = _port(), []
    for rank in (0, 1):
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                fresh_std_streams()
                os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=str(port))
                if rank == 1:
                    step = Trainer.train_step

                    def freezing(self, p):
                        if p.step == 2:
                            os.kill(os.getpid(), signal.SIGSTOP)      # frozen, not dead: its sockets stay open
                        return step(self, p)
                    Trainer.train_step = freezing
                code = main(train_cli(tmp_path / "run", "dist.strategy=ddp", "dist.backend=gloo", "dist.timeout_s=3"))
            finally:
                os._exit(code)
        pids.append(pid)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 120:
            done, status = os.waitpid(pids[0], os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the process that kept running waited more than 120 s for the frozen one")
        waited = time.monotonic() - t0
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except ProcessLookupError:
                pass
    assert os.WEXITSTATUS(status) == 1
    err = capfd.readouterr().err
    assert "failed: process 0: another process of the run did not answer within dist.timeout_s=3 s" in err
    assert "Traceback" not in err
    assert waited < 60
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "ckpt-00000002"   # kept
