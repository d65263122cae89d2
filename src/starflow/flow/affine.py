"""The affine coupling shared by the forward pass and every sampler, and classifier-free guidance.

Forward:  z = (x - shift) / scale,  log|det| = -sum log scale
Inverse:  x = z * scale + shift
(the official code calls `scale` "xa" and notes that it is 1/sigma of the token's Gaussian.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.precision import upcast

__all__ = ["INV_SOFTPLUS_1", "affine_params", "guide", "forward_affine", "inverse_affine"]

INV_SOFTPLUS_1 = 0.541324854612918  # softplus(INV_SOFTPLUS_1) == 1: a zero head output is the identity


def affine_params(raw: torch.Tensor, softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a head output (..., 2C) into (scale, shift), in float32 for stability."""
    a, b = upcast(raw).chunk(2, dim=-1)
    scale = F.softplus(a + INV_SOFTPLUS_1) if softplus else a.exp()
    return scale, b


def guide(scale: torch.Tensor, shift: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Official closed-form guidance on a doubled batch [cond; uncond].

    Treats each half as a Gaussian and forms (1+w) log p_c - w log p_u; the ratio of scales is clipped
    at 1 so the combined variance stays positive. Returns the guided (scale, shift) for *both* halves.
    """
    s_c, s_u = scale.chunk(2, dim=0)
    m_c, m_u = shift.chunk(2, dim=0)
    s = (s_c / s_u).clip(max=1.0).square()
    denom = 1 + w - w * s
    scale_eff = s_c / denom.sqrt()
    shift_eff = ((1 + w) * m_c - (w * s) * m_u) / denom
    return torch.cat([scale_eff, scale_eff]), torch.cat([shift_eff, shift_eff])


def forward_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (upcast(x) - shift) / scale, -torch.log(scale)


def inverse_affine(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return upcast(z) * scale + shift
