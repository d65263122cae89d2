"""A preallocated key/value cache for one flow block (all its layers).

Keys are stored *after* RoPE: a rotation depends only on the position, so rotating once at write
time gives the same numbers as the official code's re-rotation of the whole cache at every step.
"""
from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (num_layers, batch, kv_heads, length, head_dim)
        # uninitialised: only entries below `pos` are ever read (zero-filling costs a pass over memory)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # number of valid entries (the same for every layer)

    @property
    def capacity(self) -> int:
        return self.k.size(3)

    @property
    def batch(self) -> int:
        return self.k.size(1)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, l, D) at [pos, pos + l) and return views of everything up to pos + l."""
        end = self.pos + k.size(2)
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} entries needed, {self.capacity} allocated")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def rewind(self, n: int) -> None:
        self.pos = max(0, self.pos - n)

    def reset(self) -> None:
        self.pos = 0

    def grow(self, length: int) -> None:
        """Make room for at least `length` entries, keeping what is stored."""
        if length <= self.capacity:
            return
        pad = (0, 0, 0, length - self.capacity)
        self.k = torch.nn.functional.pad(self.k, pad)
        self.v = torch.nn.functional.pad(self.v, pad)
