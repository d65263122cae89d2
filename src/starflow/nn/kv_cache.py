"""A preallocated key/value cache for one flow block (all its layers).

Keys are stored *after* RoPE: a rotation depends only on the position, so rotating once at write
time gives the same numbers as the official code's re-rotation of the whole cache at every step.
"""
from __future__ import annotations

import torch

__all__ = ["KVCache", "StaticSlot"]


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (batch, kv_heads, length, head_dim)
        # one tensor per layer (a compiled step writes a layer without touching the others' memory);
        # uninitialised: only entries below `pos` are ever read (zero-filling costs a pass over memory)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.length, self.batch = length, batch
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.pos = 0  # number of valid entries (the same for every layer)

    @property
    def capacity(self) -> int:
        return self.length

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, l, D) at [pos, pos + l) and return views of everything up to pos + l."""
        end = self.pos + k.size(2)
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} entries needed, {self.capacity} allocated")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def rewind(self, n: int) -> None:
        self.pos = max(0, self.pos - n)

    def move(self, src: int, dst: int, count: int, turn_keys=None) -> None:
        """Copy the entries [src, src + count) of every layer to [dst, dst + count) (the ranges may overlap),
        passing the keys through `turn_keys` (e.g. a RoPE rotation to their new positions) when given."""
        for k, v in zip(self.k, self.v):
            ks = k[:, :, src:src + count]
            k[:, :, dst:dst + count] = turn_keys(ks) if turn_keys is not None else ks.clone()
            v[:, :, dst:dst + count] = v[:, :, src:src + count].clone()

    def reset(self) -> None:
        self.pos = 0

    def grow(self, length: int) -> None:
        """Make room for at least `length` entries, keeping what is stored."""
        if length <= self.capacity:
            return
        pad = (0, 0, 0, length - self.capacity)
        self.k = [torch.nn.functional.pad(t, pad) for t in self.k]
        self.v = [torch.nn.functional.pad(t, pad) for t in self.v]
        self.length = length


class StaticSlot:
    """A KVCache seen through fixed shapes, for one-token steps under torch.compile.

    `write` stores the step's k, v at the position held in the tensor `where` and returns the cache's
    whole capacity, so every step has the same shapes and one traced graph serves every position; the
    caller passes an additive mask (1, capacity) that hides the entries not written yet, and the RoPE
    rows of the step's position. `pos` stays 0: that is what makes Trunk.run use the given RoPE rows
    as they are and leave masking to the given mask.
    """

    pos = 0

    def __init__(self, cache: KVCache, where: torch.Tensor):
        self.cache, self.where = cache, where

    @property
    def dtype(self) -> torch.dtype:
        return self.cache.dtype

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ck, cv = self.cache.k[layer], self.cache.v[layer]        # (B, H_kv, capacity, D)
        ck.index_copy_(2, self.where, k)
        cv.index_copy_(2, self.where, v)
        return ck, cv

    def advance(self, n: int) -> None:   # the caller moves `where` and the mask
        pass
