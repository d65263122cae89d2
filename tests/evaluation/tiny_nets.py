"""Tiny random stand-ins for the real evaluation networks, written to disk in the real files' formats."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from starflow.evaluation.inception import INCEPTION_FILE


class TinyInception(torch.nn.Module):
    """Inception-shaped: RGB floats in [0, 255] of any size, resized inside, `return_features=True` -> (N, dim)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(8, dim, 3)
        self.fc = torch.nn.Linear(dim, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
        x = (x - 128) / 128
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        f = x.mean([2, 3])
        if return_features:
            return f
        return self.fc(f)


def write_tiny_inception(folder: Path, dim: int = 16, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INCEPTION_FILE
    torch.jit.script(TinyInception(dim).eval()).save(str(path))
    return path
