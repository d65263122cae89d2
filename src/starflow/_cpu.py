"""How the CPU threads wait: set before torch starts its OpenMP runtime (it reads the environment once).

PyTorch's CPU build runs its parallel regions on GNU OpenMP, whose idle threads spin (busy-wait) for a
while before they sleep. On a machine of our own that costs nothing; on a shared one (a laptop, CI, a
second training job) the spinning threads burn the cores the other job needs, and each job's threads wait
for ones that are not running: measured here, a 2-thread training step went ~8x slower beside another
2-thread job instead of ~2x (benchmarks/shared_cpu.py, benchmarks/RESULTS.md). So, unless the user chose
(OMP_WAIT_POLICY or GOMP_SPINCOUNT set, or STARFLOW_CPU_POLICY=spin), starflow caps the spin at a short
GOMP_SPINCOUNT: threads still catch the next parallel region of a busy step, and stop holding a core
soon after the work runs out. Nothing changes when torch was imported before starflow.
"""
from __future__ import annotations

import os
import sys

SPINCOUNT = "10000"      # spin iterations before sleeping (libgomp's default is 300000; PASSIVE is 0)


def apply_default_cpu_policy() -> None:
    if "torch" in sys.modules:                     # its OpenMP runtime has read the environment already
        return
    policy = os.environ.get("STARFLOW_CPU_POLICY", "shared").lower()
    if policy == "spin" or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if policy == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
