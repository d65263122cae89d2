"""Checks the commands share, made before any model is loaded: counts, devices, output paths.

One rule for counts given on the command line (block sizes, iterations, frames, fps, batch sizes, images):
0 and negative numbers are errors, never a silent stand-in for the default (leave the flag out for that).
"""
from __future__ import annotations

import argparse

__all__ = ["positive_int", "check_device"]


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value} (leave the option out for its default)")
    return value


def check_device(name: str | None) -> str:
    """`--device` value -> a device torch can use here (default: cuda when available, else cpu); a name torch
    does not know, or a GPU this machine does not have, is a ValueError saying so."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N (N a GPU index)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if not torch.backends.cuda.is_built() else "no GPU is visible"
            raise ValueError(f"--device {name}: {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: starflow runs on cpu, cuda or mps")
    return name
