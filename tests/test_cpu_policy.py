"""starflow._cpu: torch's thread count follows the cores other processes leave free, unless the user chose one."""
import os
import subprocess
import sys

import pytest
import torch

from starflow import _cpu


class FakeProc:
    """/proc/stat and /proc/self/stat readings for a 2-core machine, advanced by hand (100 ticks a second)."""

    def __init__(self, monkeypatch):
        self.t, self.busy, self.own = 1000.0, 0, 0
        monkeypatch.setattr(_cpu, "_busy_jiffies", lambda: self.busy)
        monkeypatch.setattr(_cpu, "_own_jiffies", lambda: self.own)
        monkeypatch.setattr(_cpu.time, "monotonic", lambda: self.t)

    def run(self, seconds: float, others_cores: float, own_cores: float):
        self.t += seconds
        self.busy += int(100 * seconds * (others_cores + own_cores))
        self.own += int(100 * seconds * own_cores)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _governor(monkeypatch, proc):
    g = _cpu.ThreadGovernor(max_threads=2, interval=0.5)
    g.cores, g.tick_rate = 2, 100
    return g


def test_threads_follow_the_free_cores(monkeypatch, threads):
    proc = FakeProc(monkeypatch)
    g = _governor(monkeypatch, proc)
    proc.run(1.0, others_cores=0.05, own_cores=2.0)           # alone: both cores
    assert g.tick() == 2 and torch.get_num_threads() == 2
    proc.run(1.0, others_cores=1.0, own_cores=1.0)            # another job takes a core's worth
    assert g.tick() == 1 and torch.get_num_threads() == 1
    proc.run(0.2, others_cores=0.0, own_cores=1.0)            # too soon for another look
    assert g.tick() == 1
    proc.run(1.0, others_cores=0.1, own_cores=1.0)            # it ended: both cores again
    assert g.tick() == 2 and torch.get_num_threads() == 2
    proc.run(1.0, others_cores=2.0, own_cores=0.5)            # a machine full of others: never below 1
    assert g.tick() == 1 and g.others == pytest.approx(2.0)


def test_the_first_look_after_import_comes_sooner(monkeypatch, threads):
    proc = FakeProc(monkeypatch)
    g = _governor(monkeypatch, proc)
    proc.run(0.05, others_cores=1.0, own_cores=1.0)           # too soon even for the first look
    assert g.tick() == 2
    proc.run(0.1, others_cores=1.0, own_cores=1.0)            # a program's setup: fitted before its first step
    assert g.tick() == 1
    proc.run(0.2, others_cores=0.0, own_cores=2.0)            # from then on, the usual interval
    assert g.tick() == 1


def test_a_count_set_by_someone_else_stands(monkeypatch, threads):
    proc = FakeProc(monkeypatch)
    g = _governor(monkeypatch, proc)
    torch.set_num_threads(1)                                  # the user's own call
    proc.run(1.0, others_cores=0.0, own_cores=1.0)
    assert g.tick() == 1 and not g.active
    proc.run(1.0, others_cores=0.0, own_cores=1.0)
    assert g.tick() == 1 and torch.get_num_threads() == 1


def test_never_more_than_torch_started_with(monkeypatch, threads):
    proc = FakeProc(monkeypatch)
    g = _cpu.ThreadGovernor(max_threads=1, interval=0.5)
    g.cores, g.tick_rate = 2, 100
    torch.set_num_threads(1)
    g.threads = 1
    proc.run(1.0, others_cores=0.0, own_cores=1.0)
    assert g.tick() == 1


def test_unreadable_proc_leaves_the_count_alone(monkeypatch, threads):
    monkeypatch.setattr(_cpu, "_busy_jiffies", lambda: None)
    g = _cpu.ThreadGovernor()
    assert not g.active and g.tick() == 2


def test_real_proc_readings_are_numbers():
    if not os.path.exists("/proc/stat"):
        pytest.skip("Linux only")
    assert _cpu._busy_jiffies() > 0 and _cpu._own_jiffies() >= 0


PROBE = "import starflow._cpu as c; print(c._pinned, c._governor is not None)"


@pytest.mark.parametrize("env, expected", [
    ({}, "False True"),
    ({"STARFLOW_ADAPT_THREADS": "0"}, "True False"),
    ({"OMP_NUM_THREADS": "2"}, "True False"),                 # the user's choice stands
])
def test_the_user_can_pin_the_count(env, expected):
    base = {k: v for k, v in os.environ.items()
            if k not in ("STARFLOW_ADAPT_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expected


def test_pin_threads_stops_the_governor(monkeypatch, threads):
    monkeypatch.setattr(_cpu, "_pinned", False)
    _cpu.pin_threads(1)
    assert _cpu._pinned and torch.get_num_threads() == 1
    _cpu.adapt_threads()                                      # a no-op now
    assert torch.get_num_threads() == 1
