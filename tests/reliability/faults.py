"""Faults for the reliability tests: a training run in a forked child that is killed (`kill -9`) at a chosen
point or time, a writer that fills the disk at a chosen byte, and what a run leaves behind to compare.

Forking the warm test process costs milliseconds where a fresh interpreter costs seconds (torch's import);
the child runs the real `starflow train` command line and ends by `os._exit`, or by the kill."""
from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from ..training.conftest import tiny_overrides


def train_argv(config: Path, out: Path, *extra: str, resume: bool = False) -> list[str]:
    """`starflow train` on the tiny digits model of the training tests."""
    argv = ["train", "--config", str(config), *tiny_overrides(out, *extra)]
    return argv + (["--resume"] if resume else [])


def empty_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "empty.yaml"
    path.write_text("# every setting comes from the command line\n")
    return path


def fresh_std_streams() -> None:
    """In a forked child: sys.stdout / sys.stderr as new file objects on the same descriptors (what pytest's
    capfd reads), not the capture objects inherited from pytest, whose locks a child can find taken."""
    import sys

    sys.stdout = open(os.dup(1), "w", buffering=1)
    sys.stderr = open(os.dup(2), "w", buffering=1)


def fresh_progress_lock() -> None:
    """In a forked child: tqdm's write lock as a new thread lock of the child's own. tqdm guards its bars with a
    multiprocessing RLock that a fork shares with the parent; a child killed while drawing a bar would leave it held,
    and every later bar in the parent (the resumed run) would wait for it forever."""
    from tqdm import std

    lock, classes = threading.RLock(), [std.tqdm]
    while classes:                                 # tqdm.auto's class and any other subclass may hold its own
        cls = classes.pop()
        cls._lock = lock
        classes += cls.__subclasses__()


def in_child(body: Callable[[], int], kill_after: float | None = None) -> tuple[int | None, int | None]:
    """Run `body` in a forked child -> (exit code or None, signal number or None). kill_after: seconds after
    which the parent sends SIGKILL (a kill at a random moment), if the child is still running."""
    pid = os.fork()
    if pid == 0:                                   # the child: never returns into pytest
        code = 99
        try:
            fresh_std_streams()
            fresh_progress_lock()
            torch.set_num_threads(1)
            code = int(body() or 0)
        except BaseException:                      # noqa: BLE001 - report and leave with a code
            traceback.print_exc()
        finally:
            os._exit(code)
    if kill_after is not None:
        end = time.monotonic() + kill_after
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    else:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_call(owner, name: str, n: int, before: Callable | None = None,
                 when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace owner.name so that its n-th call (among those `when` accepts) runs `before(*args)` (a partial
    write) and then kills the process. For use in a child only: nothing is restored."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                if before is not None:
                    before(*args, **kwargs)
                die()
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)


class DiskFull:
    """An `os` module for one writer module whose `write` fills the disk after `budget` bytes: the write that
    crosses it stores what fits and returns the short count, the next one raises ENOSPC, as on a real disk.
    `truncate_fails`: freeing a torn tail fails too (a worse disk), so the torn line stays."""

    def __init__(self, budget: int, truncate_fails: bool = False):
        self.budget, self.written, self.truncate_fails = budget, 0, truncate_fails
        self.module = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
        self.module.write = self.write
        self.module.ftruncate = self.ftruncate

    def write(self, fd: int, data) -> int:
        room = self.budget - self.written
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, bytes(data[:room]))
        self.written += n
        return n

    def ftruncate(self, fd: int, length: int) -> None:
        if self.truncate_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.ftruncate(fd, length)


# ---- what a run leaves ------------------------------------------------------------------------------------
def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def curve(rows: list[dict]) -> list[tuple]:
    """The training curve of metric rows: (step, loss, bpd, lr, grad norm) of each training row."""
    return [(r["step"], r["loss"], r["bpd"], r["lr"], r["grad_norm"]) for r in rows if "loss" in r]


def evaluations(rows: list[dict]) -> list[tuple]:
    return [(r["step"], r["eval_bpd"]) for r in rows if "eval_bpd" in r]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "flow" / "model.safetensors"))


def leftovers(run: Path) -> list[str]:
    """Temporary files and folders of interrupted writes still lying in a run folder."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".tmp-" in p.name or p.name.endswith(".old"))
