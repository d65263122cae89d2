"""starflow caps OpenMP's spin-waiting before torch starts, unless the user chose a wait policy."""
import os
import subprocess
import sys

import pytest

PROBE = "import os, starflow; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"


@pytest.mark.parametrize("env, expected", [
    ({}, "10000 None"),
    ({"STARFLOW_CPU_POLICY": "spin"}, "None None"),
    ({"STARFLOW_CPU_POLICY": "passive"}, "None PASSIVE"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE"),          # the user's choice stands
    ({"GOMP_SPINCOUNT": "5"}, "5 None"),
])
def test_default_wait_policy(env, expected):
    base = {k: v for k, v in os.environ.items()
            if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "STARFLOW_CPU_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expected


def test_no_change_once_torch_runs():
    probe = "import os, torch, starflow; print(os.environ.get('GOMP_SPINCOUNT'))"
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
