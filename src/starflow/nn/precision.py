"""Precision policy: numerically sensitive steps run in float32 (as the official code), or float64 if given."""
import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bf16/float32 inputs; float64 stays float64 (tests check exactness in float64)."""
    return x if x.dtype == torch.float64 else x.float()
