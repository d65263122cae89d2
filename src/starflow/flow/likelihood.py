"""Exact likelihood: per-sample negative log-likelihood, bits per dimension, the official training loss."""
from __future__ import annotations

import math

import torch

from ..nn.packed import packed_linears
from .model import StarFlow

__all__ = ["nll", "nll_from_terms", "bits_per_dim", "official_loss", "LOG_2PI"]

LOG_2PI = math.log(2 * math.pi)


def nll_from_terms(loss_z: torch.Tensor, loss_logdet: torch.Tensor, dims: int) -> torch.Tensor:
    """Per-sample -log p in nats from the official loss terms (StarFlow.loss_terms, means over the `dims`
    dimensions of a sample): D (0.5 mean z^2 - sum mean logdet) + D/2 log 2pi, in float64."""
    return dims * (loss_z.double() + loss_logdet.double()) + 0.5 * dims * LOG_2PI


def nll(model: StarFlow, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(x | y) in nats for each sample (B,): 0.5|z|^2 + D/2 log 2pi - sum log|det|.

    Without gradients (evaluation) the Linear weights are packed for the pass (nn.packed); with them it is
    the training forward, unchanged."""
    with packed_linears(model, single_pass=True):
        out = model(x, y)
    loss_z, loss_logdet = model.loss_terms(out.z, out.logdets)
    return nll_from_terms(loss_z, loss_logdet, x[0].numel()).to(torch.promote_types(loss_z.dtype, x.dtype))


def bits_per_dim(nll_nats: torch.Tensor, num_dims: int, data_scale: float = 1.0) -> torch.Tensor:
    """Bits per dimension of the *original* data when x = scale * v + offset (dequantised values v).

    The change of variables adds D log(scale) nats: -log p(v) = -log p(x) - D log(scale). For digits
    with x = (v + u) * 2/17 - 1, pass data_scale = 2/17.
    """
    return (nll_nats - num_dims * math.log(data_scale)) / (num_dims * math.log(2))


def official_loss(model: StarFlow, x: torch.Tensor, y: torch.Tensor | None = None,
                  weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The official objective: mean over the batch of 0.5 mean(z^2) - sum_blocks mean(logdet)."""
    out = model(x, y)
    loss_z, loss_logdet = model.loss_terms(out.z, out.logdets)
    loss = loss_z + loss_logdet
    if weights is not None:
        loss = loss * weights
    return {"loss": loss.mean(), "loss_z": loss_z.detach().mean(), "loss_logdet": loss_logdet.detach().mean(),
            "z": out.z}
