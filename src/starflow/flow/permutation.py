"""Token orders of the flow blocks. Sequences are (B, N, C) with N = frames * h * w, frame-major."""
from __future__ import annotations

import torch

__all__ = ["permute", "ORDERS"]

ORDERS = ("identity", "flip", "flip_in_frame")


def permute(x: torch.Tensor, order: str, frames: int = 1, dim: int = 1) -> torch.Tensor:
    """Apply a block's token order. Every order here is its own inverse."""
    if order == "identity":
        return x
    if order == "flip":
        return x.flip(dims=[dim])
    if order == "flip_in_frame":  # reverse within each frame, frames stay in time order
        if dim != 1:
            raise ValueError("flip_in_frame permutes dimension 1")
        return x.reshape(x.size(0), frames, -1, *x.shape[2:]).flip(dims=[2]).reshape(x.shape)
    raise ValueError(f"unknown token order {order!r}; expected one of {ORDERS}")
