"""Class-label conditioning: one-hot rows of an identity matrix with an extra null class.

Mirrors the official label embedder: num_classes + 1 one-hot vectors, one token per sample, the last
class (index num_classes) standing for "no label" (the unconditional branch, or a dropped label).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .text import TextEncoder

__all__ = ["LabelEncoder"]


class LabelEncoder(TextEncoder):
    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(num_classes + 1, 1)
        self.num_classes = int(num_classes)
        self.register_buffer("table", torch.eye(num_classes + 1), persistent=False)  # (K+1, K+1)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _indices(self, labels: Any) -> torch.Tensor:
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.is_complex():
                raise TypeError(f"class labels must be an integer tensor, got {labels.dtype}")
            idx = labels.reshape(-1).long()
        elif isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise TypeError(f"class labels must be a list of ints / int strings or a LongTensor, got {labels!r}")
        else:
            out = []
            for v in labels:
                if isinstance(v, str):
                    s = v.strip()
                    if s == "":  # a dropped caption (classifier-free guidance) is the null class
                        out.append(self.null_class)
                        continue
                    try:
                        out.append(int(s))
                    except ValueError:
                        raise ValueError(f"class label {v!r} is not an integer; label conditioning takes class "
                                         f"indices 0..{self.num_classes - 1} (or '' for no label)") from None
                elif isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
                    raise TypeError(f"class label {v!r} is not an integer")
                else:
                    out.append(int(v))
            idx = torch.tensor(out, dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError("no labels to encode")
        bad = (idx < 0) | (idx > self.num_classes)
        if bad.any():
            raise ValueError(f"class labels {idx[bad].tolist()} out of range 0..{self.num_classes} "
                             f"({self.num_classes} = null class)")
        return idx.to(self.table.device)

    @torch.no_grad()
    def encode(self, prompts: Any, *, fps: Any = None, noise_std: Any = None, aspect_ratio: Any = None) -> torch.Tensor:
        """labels (list[int] | LongTensor | list of int strings) -> (B, 1, num_classes + 1) one-hot."""
        if fps is not None or noise_std is not None or aspect_ratio is not None:
            # the official lookup would map a templated caption to the null class; refuse instead
            raise ValueError("class-label conditioning takes no prompt templates (fps, noise_std, aspect_ratio)")
        idx = self._indices(prompts)
        return F.embedding(idx, self.table).unsqueeze(1).float()  # (B, 1, K+1)

    def null(self, batch: int, *, fps: Any = None, noise_std: Any = None, aspect_ratio: Any = None) -> torch.Tensor:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return self.encode([self.null_class] * batch, fps=fps, noise_std=noise_std, aspect_ratio=aspect_ratio)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, null_class={self.null_class}"
