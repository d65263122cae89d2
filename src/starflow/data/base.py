"""What every dataset hands the trainer: quantised pixels (integers), a caption and a class label per item.

Datasets keep pixels as integers `v` in `0 .. levels-1` (uint8) so that the trainer can either
dequantise them exactly (`x = (v + u) * 2/levels - 1`, u ~ U[0,1), the likelihood protocol) or map
them to `[-1, 1]` (`x = v * 2/(levels-1) - 1`) and add Gaussian noise (the official recipe).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch", "QuantizedDataset", "InMemoryDataset", "Subset", "to_unit_range", "dequantize", "NUMBER_WORDS"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class Batch:
    values: torch.Tensor        # uint8 (B, C, H, W) or (B, T, C, H, W)
    captions: list[str]
    labels: torch.Tensor        # (B,) long; -1 where a dataset has no classes
    indices: torch.Tensor       # (B,) dataset indices
    levels: int                 # number of quantisation levels of `values`
    source: int = 0             # identifies the dataset the indices refer to (caches key on (source, index))


def to_unit_range(values: torch.Tensor, levels: int) -> torch.Tensor:
    """Integers 0..levels-1 -> [-1, 1] (the official image normalisation for levels = 256)."""
    return values.float() * (2.0 / (levels - 1)) - 1.0


def dequantize(values: torch.Tensor, levels: int, u: torch.Tensor) -> torch.Tensor:
    """Uniform dequantisation x = (v + u) * 2/levels - 1 with u in [0, 1): a density on [-1, 1)."""
    return (values.float() + u) * (2.0 / levels) - 1.0


class QuantizedDataset:
    """Base class. Subclasses fill `captions`, `labels`, `class_names`, `levels` and implement `load`."""

    levels: int = 256
    captions: list[str]
    labels: torch.Tensor
    class_names: list[str]
    is_video: bool = False

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self, index: int) -> torch.Tensor:
        """One item as uint8 (C, H, W) or (T, C, H, W)."""
        raise NotImplementedError

    def bucket_ids(self) -> list[int] | None:
        """Aspect-ratio bucket of each item (a batch never mixes buckets), or None: all items share a shape."""
        return None

    def get_batch(self, indices: torch.Tensor) -> Batch:
        idx = [int(i) for i in indices]
        items = [self.load(i) for i in idx]
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) > 1:
            raise ValueError(f"a batch mixes item shapes {sorted(shapes)}: use aspect-ratio buckets")
        return Batch(torch.stack(items), [self.captions[i] for i in idx], self.labels[idx].long(),
                     torch.as_tensor(idx, dtype=torch.long), self.levels, id(self))

    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.load(0).shape)


class InMemoryDataset(QuantizedDataset):
    """All items in one uint8 tensor (N, C, H, W) or (N, T, C, H, W): the bundled digit sets."""

    def __init__(self, values: torch.Tensor, captions: list[str], labels: torch.Tensor, class_names: list[str],
                 levels: int):
        if values.dtype != torch.uint8:
            raise ValueError(f"values must be uint8, got {values.dtype}")
        if len(captions) != values.size(0) or labels.numel() != values.size(0):
            raise ValueError("values, captions and labels must have one entry per item")
        if int(values.max()) >= levels:
            raise ValueError(f"values reach {int(values.max())} but levels={levels}")
        self.values = values
        self.captions = list(captions)
        self.labels = labels.long()
        self.class_names = list(class_names)
        self.levels = levels
        self.is_video = values.dim() == 5

    def load(self, index: int) -> torch.Tensor:
        return self.values[index]

    def get_batch(self, indices: torch.Tensor) -> Batch:
        indices = torch.as_tensor(indices, dtype=torch.long)
        return Batch(self.values[indices], [self.captions[i] for i in indices.tolist()], self.labels[indices],
                     indices, self.levels, id(self))

    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])


class Subset(QuantizedDataset):
    """Items `indices` of another dataset (a validation split carved from the training set)."""

    def __init__(self, base: QuantizedDataset, indices: torch.Tensor):
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.captions = [base.captions[i] for i in self.indices.tolist()]
        self.labels = base.labels[self.indices]
        self.class_names = base.class_names
        self.levels = base.levels
        self.is_video = base.is_video

    def load(self, index: int) -> torch.Tensor:
        return self.base.load(int(self.indices[index]))

    def bucket_ids(self) -> list[int] | None:
        ids = self.base.bucket_ids()
        return None if ids is None else [ids[i] for i in self.indices.tolist()]

    def get_batch(self, indices: torch.Tensor) -> Batch:
        # indices and source stay those of the base dataset: caches are shared with it
        return self.base.get_batch(self.indices[torch.as_tensor(indices, dtype=torch.long)])

    def item_shape(self) -> tuple[int, ...]:
        return self.base.item_shape()
