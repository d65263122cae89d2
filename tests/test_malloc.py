"""starflow._malloc: glibc keeps freed blocks for the next call instead of page faults."""
import platform
import subprocess
import sys

import pytest

from starflow import _malloc

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt")

_CHURN = """
import resource, sys, torch
if sys.argv[1] == "1":
    import starflow._malloc as m
    assert m.tune() and m.tune()                  # once per process; a second call changes nothing
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = []
for i in range(8):                                # two 24 MiB activations made and freed, as a trunk call does
    f = faults()
    a = torch.ones(6 * 2**20); b = torch.ones(6 * 2**20)
    del a, b
    n.append(faults() - f)
print(sum(n[2:]))
"""


def _faults(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _CHURN, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    tuned, plain = _faults(True), _faults(False)
    # 24 MiB is 6144 pages; measured over six runs each: tuned 0 or 6144 (one block, once), plain 30,000-68,000
    assert tuned < 2 * 6144 and tuned < plain / 2


@glibc
@pytest.mark.parametrize("env", [{"STARFLOW_MALLOC_TUNING": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"MALLOC_MMAP_THRESHOLD_": "65536"}])
def test_the_users_choice_stands(monkeypatch, env):
    monkeypatch.setattr(_malloc, "_done", None)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _malloc.tune() is False


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(_malloc, "_done", None)
    monkeypatch.setattr(_malloc.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert _malloc.tune() is False
