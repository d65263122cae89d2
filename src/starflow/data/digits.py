"""The scikit-learn handwritten digits (1797 images of 8x8 pixels, values 0..16), bundled with scikit-learn.

Split and likelihood protocol (fixed, so results compare across runs): `torch.randperm(1797,
generator=torch.Generator().manual_seed(0))`, the first 297 indices are the test set, the rest train.
Pixels are dequantised as x = (v + u) * 2/17 - 1 with u ~ U[0, 1).
"""
from __future__ import annotations

import functools

import torch

from .base import NUMBER_WORDS, InMemoryDataset

__all__ = ["DIGITS_LEVELS", "DIGITS_TEST_SIZE", "digits_split", "load_digits_arrays", "DigitsDataset",
           "digit_caption"]

DIGITS_LEVELS = 17          # pixel values 0..16
DIGITS_TOTAL = 1797
DIGITS_TEST_SIZE = 297


def digit_caption(label: int) -> str:
    return f"a handwritten digit {NUMBER_WORDS[label]}"


def digits_split() -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices) of the protocol split."""
    perm = torch.randperm(DIGITS_TOTAL, generator=torch.Generator().manual_seed(0))
    return perm[DIGITS_TEST_SIZE:], perm[:DIGITS_TEST_SIZE]


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as uint8 (1797, 1, 8, 8) values 0..16 and long labels (1797,)."""
    values, labels = _load_digits()
    return values.clone(), labels.clone()


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # shipped inside scikit-learn: no download

    d = load_digits()
    values = torch.from_numpy(d.images).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(d.target).long()
    if values.shape != (DIGITS_TOTAL, 1, 8, 8):
        raise RuntimeError(f"unexpected scikit-learn digits shape {tuple(values.shape)}")
    return values, labels


class DigitsDataset(InMemoryDataset):
    """split: "train" (1500), "test" (297) or "all". image_size: 8, or a multiple of 8 (nearest-neighbour
    upscaling, which keeps the 17 levels so the protocol still applies per pixel)."""

    def __init__(self, split: str = "train", image_size: int = 8):
        if split not in ("train", "test", "all"):
            raise ValueError(f"digits split must be 'train', 'test' or 'all', not {split!r}")
        if image_size < 8 or image_size % 8:
            raise ValueError(f"digits image_size must be a multiple of 8, got {image_size}")
        values, labels = load_digits_arrays()
        if split != "all":
            train, test = digits_split()
            idx = train if split == "train" else test
            values, labels = values[idx], labels[idx]
        if image_size != 8:
            f = image_size // 8
            values = values.repeat_interleave(f, dim=-1).repeat_interleave(f, dim=-2)
        super().__init__(values.contiguous(), [digit_caption(int(v)) for v in labels], labels,
                         [digit_caption(i) for i in range(10)], DIGITS_LEVELS)
        self.split = split
