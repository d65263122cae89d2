"""Aspect-ratio buckets (the official `aspect_ratio_to_image_size` rule) and the step-indexed batch sampler.

A bucket is an aspect ratio R = width / height. Its image size has the area of a `size` x `size`
square, each side rounded to the nearest multiple of `multiple` (autoencoder factor x patch size).

The sampler gives the global batch of any step directly (no iterator state): step s's indices are a
pure function of (seed, s). Resuming at step s therefore reads exactly the batches an uninterrupted
run would, and any number of processes can each take their slice of the same global batch.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

__all__ = ["parse_ratio", "aspect_ratio_to_image_size", "nearest_bucket", "BatchSampler"]


def parse_ratio(ratio: str | float) -> float:
    """"16:9" -> 16/9 (width over height); numbers pass through."""
    if isinstance(ratio, str):
        try:
            w, h = (float(v) for v in ratio.split(":"))
        except ValueError:
            raise ValueError(f"aspect ratio must look like 'W:H' (e.g. '16:9'), got {ratio!r}") from None
        if w <= 0 or h <= 0:
            raise ValueError(f"aspect ratio {ratio!r} must have positive sides")
        return w / h
    ratio = float(ratio)
    if ratio <= 0:
        raise ValueError(f"aspect ratio must be positive, got {ratio}")
    return ratio


def _nearest_multiple(v: float, base: int) -> int:
    return int(round(v / base)) * base


def aspect_ratio_to_image_size(size: int, ratio: str | float | None, multiple: int = 8) -> tuple[int, int]:
    """(height, width) with area ~ size^2, width/height ~ ratio, both multiples of `multiple`."""
    if ratio is None:
        return size, size
    r = parse_ratio(ratio)
    area = size * size
    h = _nearest_multiple(math.sqrt(area / r), multiple)
    w = _nearest_multiple(math.sqrt(area * r), multiple)
    if h < multiple or w < multiple:
        raise ValueError(f"aspect ratio {ratio} at size {size} rounds a side to zero (multiple {multiple})")
    return h, w


def nearest_bucket(height: int, width: int, ratios: list[float]) -> int:
    """Index of the ratio closest to width/height in log space (so 2:1 and 1:2 are equally far from 1:1)."""
    r = math.log(width / height)
    return min(range(len(ratios)), key=lambda i: abs(math.log(ratios[i]) - r))


class BatchSampler:
    """Global batches by step. Without buckets: consecutive slices of an endless stream of per-epoch
    permutations. With buckets: each epoch is a shuffled list of whole batches, every batch from one
    bucket (each bucket gives max(1, n_b // batch) batches per epoch, from its own endless stream)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, bucket_ids: list[int] | None = None):
        if num_items < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch, self.seed = num_items, batch_size, seed
        self._perms: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        if bucket_ids is None or len(set(bucket_ids)) <= 1:
            self.members = [torch.arange(num_items)]
        else:
            if len(bucket_ids) != num_items:
                raise ValueError("bucket_ids needs one entry per item")
            ids = torch.as_tensor(bucket_ids)
            self.members = [torch.nonzero(ids == b).flatten() for b in sorted(set(bucket_ids))]
        self.per_epoch = [max(1, len(m) // batch_size) for m in self.members]
        self.epoch_batches = sum(self.per_epoch)

    def _perm(self, bucket: int, epoch: int) -> torch.Tensor:
        key = (bucket, epoch)
        if key not in self._perms:
            g = torch.Generator().manual_seed(hash((self.seed, bucket, epoch)) % (2 ** 62))
            self._perms[key] = self.members[bucket][torch.randperm(len(self.members[bucket]), generator=g)]
            while len(self._perms) > 16:
                self._perms.popitem(last=False)
        return self._perms[key]

    def _stream(self, bucket: int, start: int, count: int) -> torch.Tensor:
        """Items start .. start+count of the bucket's endless stream of epoch permutations."""
        size = len(self.members[bucket])
        out, pos = [], start
        while len(out) < count:
            e, o = divmod(pos, size)
            take = min(size - o, count - len(out))
            out.extend(self._perm(bucket, e)[o:o + take].tolist())
            pos += take
        return torch.as_tensor(out, dtype=torch.long)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        order = torch.cat([torch.full((k,), b) for b, k in enumerate(self.per_epoch)])
        g = torch.Generator().manual_seed(hash((self.seed, -1, epoch)) % (2 ** 62))
        return order[torch.randperm(len(order), generator=g)]

    def indices(self, step: int) -> torch.Tensor:
        """The global batch (batch_size,) of dataset indices for `step` (0-based)."""
        if len(self.members) == 1:
            return self._stream(0, step * self.batch, self.batch)
        epoch, j = divmod(step, self.epoch_batches)
        order = self._epoch_order(epoch)
        b = int(order[j])
        before = epoch * self.per_epoch[b] + int((order[:j] == b).sum())
        return self._stream(b, before * self.batch, self.batch)
