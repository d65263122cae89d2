"""What the CPU under this process is, as far as it decides which kernel is faster.

The CPU paths of nn (blocked causal attention, packed Linear weights) were measured on two kinds of host
(benchmarks/RESULTS.md) and the faster choice differs between them, for one reason above all: MKL, torch's
float32 BLAS on x86, takes its tuned small-matrix paths only on Intel CPUs. On an AMD EPYC a 4-row product
pays for re-packing the weight on every call (packed oneDNN weights halve it) and SDPA's flash kernel, whose
inner products are small BLAS calls, loses to a few large batched products; on an Intel Xeon the plain BLAS
call is the faster one for a handful of rows and flash wins in float32.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

__all__ = ["cpu_has", "cpu_info", "cpu_vendor", "intel_mkl"]


def cpu_has(probe_name: str) -> bool:
    """torch.cpu's probe of a CPU feature (e.g. "_is_amx_tile_supported"); private functions, hence the guards."""
    probe = getattr(torch.cpu, probe_name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("vendor_id", "model name", "cpu family", "model", "flags",
    ...); {} where there is no such file (not Linux)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}


def cpu_vendor() -> str:
    """"GenuineIntel", "AuthenticAMD", ... where the OS says (Linux: /proc/cpuinfo; Windows: the processor
    string); "" where it does not (then nothing vendor-specific is assumed)."""
    vendor = cpu_info().get("vendor_id")
    if vendor:
        return vendor
    proc = platform.processor()
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in proc), "")


@functools.cache
def intel_mkl() -> bool:
    """Whether float32 products go to MKL on an Intel CPU, i.e. take MKL's tuned paths (see the module's note)."""
    return torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"
