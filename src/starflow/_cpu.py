"""CPU threads on a shared machine: use the cores other processes leave free.

torch runs its parallel regions on an OpenMP team of `torch.get_num_threads()` threads that meet at a barrier
after every operator. Beside another busy process (a second training, a browser, CI) some of those threads are
not running when the others arrive, and every barrier waits for a scheduler time slice: measured on a 2-core
machine with another 2-thread PyTorch job, Jacobi sampling went 12x slower with 2 threads and 1.3x with 1
(benchmarks/shared_cpu.py, benchmarks/RESULTS.md). OpenMP's wait policy does not fix it (passive waiting: 4.4x,
and 40% slower alone), so starflow fits the thread count instead: the training loop and the samplers call
`adapt_threads()` often; at most twice a second it reads, from /proc, how many cores' worth of time other
processes used since the last look, and sets torch's thread count to the cores left (at least 1, at most the
count torch started with).

It stays out of the way when the user chose: OMP_NUM_THREADS / MKL_NUM_THREADS set, STARFLOW_ADAPT_THREADS=0,
a fixed count asked for (`pin_threads`, e.g. a training config's optim.num_threads, the bench's --threads), or
`torch.set_num_threads` called by anyone else (noticed at the next look: the governor then stops for good).
Only on Linux (it reads /proc/stat).
"""
from __future__ import annotations

import os
import time

import torch

INTERVAL_S = 0.5          # how often the load is looked at: a time slice is ~ms, a training step ~0.1-1 s
FIRST_INTERVAL_S = 0.1    # the first time after the look at import (10 clock ticks: enough to see a busy core)


def _busy_jiffies() -> int | None:
    """Non-idle time of all CPUs (clock ticks) from /proc/stat's first line, None when unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)            # idle + iowait
    return sum(fields[:8]) - idle                                       # guest time is inside user already


def _own_jiffies() -> int | None:
    """This process's CPU time (all its threads, clock ticks)."""
    try:
        with open("/proc/self/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()                  # the command name may hold spaces
        return int(rest[11]) + int(rest[12])                            # utime + stime
    except (OSError, ValueError, IndexError):
        return None


class ThreadGovernor:
    """Sets torch's thread count to the cores other processes leave free, re-checked at most every `interval` s."""

    def __init__(self, max_threads: int | None = None, interval: float = INTERVAL_S):
        self.max_threads = max(1, max_threads or torch.get_num_threads())
        try:
            self.cores = len(os.sched_getaffinity(0))
        except AttributeError:
            self.cores = os.cpu_count() or 1
        self.interval = interval
        self.tick_rate = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.threads = torch.get_num_threads()      # what the governor last saw or set
        self.active = _busy_jiffies() is not None and _own_jiffies() is not None
        self._last = self._look()
        self.others = 0.0                            # cores' worth used by other processes over the last interval
        self.first = True

    def _look(self) -> tuple[float, int, int]:
        return time.monotonic(), _busy_jiffies() or 0, _own_jiffies() or 0

    def tick(self) -> int:
        """Look at the load when `interval` has passed; returns the thread count in use."""
        if not self.active:
            return torch.get_num_threads()
        if torch.get_num_threads() != self.threads:    # someone else chose a count: theirs stands from now on
            self.active = False
            return torch.get_num_threads()
        now = time.monotonic()
        # the first look after the one at import may come sooner: a program's setup (loading an encoder, encoding
        # text) runs between them, a fraction of a second is enough to see another busy process, and setup on an
        # unfitted count was measured to take 2x as long beside one
        if now - self._last[0] < (FIRST_INTERVAL_S if self.first else self.interval):
            return self.threads
        self.first = False
        look = self._look()
        elapsed = (look[0] - self._last[0]) * self.tick_rate
        others = ((look[1] - self._last[1]) - (look[2] - self._last[2])) / max(elapsed, 1e-9)
        self._last, self.others = look, max(0.0, others)
        want = max(1, min(self.max_threads, int(self.cores - self.others + 0.5)))
        if want != self.threads:
            torch.set_num_threads(want)
            self.threads = want
        return want


_pinned = os.environ.get("STARFLOW_ADAPT_THREADS", "1").strip().lower() in ("0", "false", "no", "off") or any(
    os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
# the first look is taken at import: by the first training or sampling step (after loading models and data, on one
# thread) an interval has passed, and the count fits the machine from that step on
_governor: ThreadGovernor | None = None if _pinned else ThreadGovernor()


def adapt_threads() -> None:
    """Called from busy loops (training steps, sampler steps): cheap, it looks at the load twice a second at most."""
    if not _pinned and _governor is not None:
        _governor.tick()


def pin_threads(n: int | None = None) -> None:
    """A fixed thread count from here on (n, or the current one): the governor stops."""
    global _pinned
    _pinned = True
    if n:
        torch.set_num_threads(n)
