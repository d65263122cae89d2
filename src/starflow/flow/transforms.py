"""Fixed elementwise input transforms for likelihood runs on dequantised pixels x in [-1, 1).

The flow then models t = T(x); every reported likelihood is that of x, -log p(x) = -log p_flow(t) - log|T'(x)|,
so bits/dim stay comparable with models without a transform. Both transforms undo exactly for sampling.

- `LogitTransform` (RealNVP): t = logit(a + (1 - 2a)(x + 1)/2). Saturated pixels (the digits' many 0s and 16s)
  become long tails instead of hard edges at +-1, which affine flows fit far better.
- `Gaussianize`: t = Phi^-1(F(x)) with F the per-pixel CDF of the dequantised training data, which is
  piecewise linear (uniform within each of the L bins, bin masses counted on the training set, plus a
  pseudo-count). The marginal of every pixel becomes a standard normal and the bin structure, which an
  affine flow can only blur, is exact; the flow is left with the dependencies between pixels.
"""
from __future__ import annotations

import math

import torch

__all__ = ["LogitTransform", "Gaussianize", "load_transform", "TRANSFORM_FILE"]

TRANSFORM_FILE = "input_transform.safetensors"
_EPS = 1e-10          # CDF values are kept in [eps, 1 - eps] (|t| <= 6.4); the cut-off mass is negligible


class LogitTransform:
    kind = "logit"

    def __init__(self, alpha: float):
        if not 0 < alpha < 0.5:
            raise ValueError(f"logit alpha must be in (0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, ...) -> t (b, ...) in x's dtype, log|dt/dx| summed per sample (b,) in float64."""
        a = self.alpha
        s = a + (1 - 2 * a) * (x.double() + 1) / 2
        t = torch.log(s) - torch.log1p(-s)
        logdet = (math.log((1 - 2 * a) / 2) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return t.to(x.dtype), logdet

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        return ((torch.sigmoid(t.double()) - self.alpha) / (1 - 2 * self.alpha) * 2 - 1).to(t.dtype)

    def info(self) -> dict:
        return {"kind": self.kind, "alpha": self.alpha}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}


class Gaussianize:
    kind = "gaussianize"

    def __init__(self, probs: torch.Tensor):
        """probs: (*item_shape, L) bin probabilities of every pixel, each row summing to 1."""
        if probs.dim() < 2 or (probs <= 0).any():
            raise ValueError("Gaussianize needs strictly positive bin probabilities of shape (*item_shape, L)")
        self.probs = (probs / probs.sum(-1, keepdim=True)).double()
        self.levels = probs.size(-1)
        self.cdf = torch.cat([torch.zeros_like(self.probs[..., :1]), self.probs.cumsum(-1)], -1)  # (*, L+1)

    @classmethod
    def fit(cls, values: torch.Tensor, levels: int, pseudo_count: float = 1.0) -> "Gaussianize":
        """values: uint8 (N, *item_shape) training pixels."""
        if pseudo_count <= 0:
            raise ValueError("the pseudo-count must be positive (unseen test values need a finite density)")
        v = values.long().flatten(1)                                            # (N, P)
        if v.numel() and (v.min() < 0 or v.max() >= levels):
            raise ValueError(f"pixel values must lie in [0, {levels}), got [{int(v.min())}, {int(v.max())}]")
        # counts per (pixel, level) by one bincount: a one-hot tensor would be N x P x L
        flat = (torch.arange(v.size(1)) * levels + v).flatten()
        counts = torch.bincount(flat, minlength=v.size(1) * levels).double().view(*values.shape[1:], levels)
        return cls(counts + pseudo_count)

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.probs.shape[:-1]):
            raise ValueError(f"input transform fitted on items {tuple(self.probs.shape[:-1])}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        L = self.levels
        pos = (x.double() + 1) * (L / 2)                                    # in [0, L)
        v = pos.floor().clamp(0, L - 1)
        u = pos - v
        idx = v.long().unsqueeze(-1)
        p = torch.gather(self.probs.expand(*x.shape, L), -1, idx).squeeze(-1)
        lo = torch.gather(self.cdf.expand(*x.shape, L + 1), -1, idx).squeeze(-1)
        f = (lo + u * p).clamp(_EPS, 1 - _EPS)
        t = torch.special.ndtri(f)
        log_phi = -0.5 * t * t - 0.5 * math.log(2 * math.pi)
        logdet = (torch.log(p) + math.log(L / 2) - log_phi).flatten(1).sum(1)
        return t.to(x.dtype), logdet

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        self._check(t)
        L = self.levels
        f = torch.special.ndtr(t.double())
        cdf = self.cdf.expand(*t.shape, L + 1).contiguous()
        v = (torch.searchsorted(cdf, f.unsqueeze(-1).contiguous(), right=True) - 1).clamp(0, L - 1)
        p = torch.gather(self.probs.expand(*t.shape, L), -1, v).squeeze(-1)
        lo = torch.gather(cdf, -1, v).squeeze(-1)
        u = ((f - lo) / p).clamp(0, 1)
        return ((v.squeeze(-1).double() + u) * (2 / L) - 1).to(t.dtype)

    def info(self) -> dict:
        return {"kind": self.kind, "levels": self.levels, "file": TRANSFORM_FILE}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"probs": self.probs.float()}


def load_transform(info: dict | None, folder=None) -> LogitTransform | Gaussianize | None:
    """From its `info()` (a pipeline folder's input_transform.json) and the folder holding its tensors."""
    if not info:
        return None
    if info["kind"] == "logit":
        return LogitTransform(float(info["alpha"]))
    if info["kind"] == "gaussianize":
        from pathlib import Path

        from safetensors.torch import load_file
        return Gaussianize(load_file(str(Path(folder) / info.get("file", TRANSFORM_FILE)))["probs"])
    raise ValueError(f"unknown input transform {info['kind']!r}")
