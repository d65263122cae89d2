"""Rotary position embeddings with the official position layout.

Positions are computed for the token order *before* a block's permutation: sequence index i of a
block always gets the position of raster index i (this is what the official code does, and what
its checkpoints were trained with).

Layout (`head_dim/2` frequencies, each used for a pair of channels):
- 2D (images without text): half the frequencies for the row, half for the column.
- 3D (text, or video): `head_dim/2 - 8` split between row and column, 8 for a third axis that
  carries the text position (`arange(L)/L * pt_seq_len`, row = column = 0) and the frame index.
"""
from __future__ import annotations

import math

import torch

from .precision import upcast

__all__ = ["positions", "RotaryEmbedding", "apply_rotary", "rotary_cis", "apply_rotary_cis"]


def positions(h: int, w: int, txt_len: int = 0, pt_seq_len: float | None = None, frames: int = 0,
              mode: str = "3d") -> torch.Tensor:
    """Positions (L, 2) or (L, 3) for `txt_len` text tokens followed by `frames` (0: an image) grids of h x w."""
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', not {mode!r}")
    mean_len = math.sqrt(h * w)
    pt_seq_len = pt_seq_len or mean_len
    px = torch.arange(h) / mean_len * pt_seq_len
    py = torch.arange(w) / mean_len * pt_seq_len
    px, py = [p.reshape(-1) for p in torch.meshgrid(px, py, indexing="ij")]
    if mode == "2d":
        if txt_len:
            raise ValueError("2D RoPE has no axis for text positions")
        return torch.stack([px, py], dim=-1)
    if frames == 0:
        pos = [px, py, torch.zeros_like(px)]
    else:
        pos = [px.repeat(frames), py.repeat(frames), torch.arange(frames).repeat_interleave(h * w)]
    if txt_len > 0:
        pt = torch.arange(txt_len) / txt_len * pt_seq_len
        zeros = torch.zeros_like(pt)
        pos = [torch.cat([zeros, pos[0]]), torch.cat([zeros, pos[1]]), torch.cat([pt, pos[2]])]
    return torch.stack(pos, dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # interleaved pairs (x0, x1) -> (-x1, x0)
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, hf_style: bool = False) -> torch.Tensor:
    """Rotate x (..., L, D) by tables cos/sin (L, D); computed in float32, returned in x's dtype."""
    dtype = x.dtype
    xf = upcast(x)
    if hf_style:  # pairs are (i, i + D/2): reorder to interleaved, rotate, reorder back
        xf = xf.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)
    out = xf * cos + _rotate_half(xf) * sin
    if hf_style:
        out = out.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)
    return out.to(dtype)


def rotary_cis(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Complex table (L, D/2) cos + i sin of the interleaved tables (L, D) (each pair shares one angle)."""
    return torch.complex(cos[..., ::2].float(), sin[..., ::2].float())


def apply_rotary_cis(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Interleaved rotation as one complex product: x (..., D) by cis broadcast to (..., D/2).

    (x0 + i x1)(c + i s) = (x0 c - x1 s) + i (x1 c + x0 s): the very products and sums of `apply_rotary`
    (bit for bit in float32), in one pass instead of six. Computed in float32 (float64 stays float64), returned in x's dtype.
    """
    dtype = x.dtype
    xf = upcast(x)
    if xf.stride(-1) != 1 or any(st % 2 for st in xf.stride()[:-1]) or xf.storage_offset() % 2:
        xf = xf.contiguous()
    out = torch.view_as_real(torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * cis).flatten(-2)
    return out if out.dtype == dtype else out.to(dtype)


class RotaryEmbedding(torch.nn.Module):
    """Frequencies of the official `VisionRotaryEmbeddingFast` ('lang' frequencies, theta 10000)."""

    def __init__(self, head_dim: int, pt_seq_len: int, txt_size: int, theta: float = 10000.0):
        super().__init__()
        self.pt_seq_len = pt_seq_len
        self.has_text_axis = txt_size > 0
        self._dim, self._theta = head_dim // 2, theta
        spatial, text = self._frequencies(torch.device("cpu"))
        self.register_buffer("freqs", spatial, persistent=False)
        if self.has_text_axis:
            self.register_buffer("freqs2", text, persistent=False)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _frequencies(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(spatial, text/frame axis) frequencies, float32, computed on the CPU (explicitly: a model built under
        `torch.device("meta")` still gets real values)."""
        dim, theta = self._dim, self._theta
        spatial = dim - 8 if self.has_text_axis else dim
        f = 1.0 / (theta ** (torch.arange(0, spatial, 2, device="cpu")[: spatial // 2].float() / spatial))
        f2 = 1.0 / (theta ** (torch.arange(0, 8, device="cpu").float() / 8)) if self.has_text_axis else None
        return f.to(device), (f2.to(device) if f2 is not None else None)

    def _apply(self, fn, recurse=True):
        # The frequencies are constants, not weights: whatever `.to(dtype)`, `.to_empty()` or a meta-device
        # construction did to the buffers, they are recomputed, in float32 (float64 kept), on the buffers' device.
        # A bf16 model thus keeps exact positions (official mixed precision casts parameters only), and a model
        # materialised from the meta device (flow.weights) gets real values instead of uninitialised memory.
        super()._apply(fn, recurse)
        device = self.freqs.device
        dtype = torch.float64 if self.freqs.dtype == torch.float64 else torch.float32
        spatial, text = self._frequencies(device)
        self.freqs = spatial.to(dtype)
        if self.has_text_axis:
            self.freqs2 = text.to(dtype)
        self._tables.clear()
        return self

    def tables(self, h: int, w: int, txt_len: int, frames: int, device: torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables (L, head_dim) for txt_len text tokens then frames*h*w tokens (frames 0: image)."""
        device = device if device is not None else self.freqs.device
        key = (h, w, txt_len, frames, str(device))
        if key not in self._tables:
            # cached tables outlive the call: make them ordinary tensors even when first asked for under
            # inference_mode, or a later training step could not save them for backward
            with torch.inference_mode(False), torch.no_grad():
                self._tables[key] = self._make(h, w, txt_len, frames, device)
        return self._tables[key]

    def _make(self, h: int, w: int, txt_len: int, frames: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        mode = "3d" if (self.has_text_axis or frames > 0) else "2d"
        if mode == "3d" and not self.has_text_axis:
            raise ValueError("3D RoPE (video) needs txt_size > 0: its frame axis shares the text frequencies")
        pos = positions(h, w, txt_len, self.pt_seq_len, frames, mode).float()
        parts = [pos[:, 0, None] * self.freqs.cpu(), pos[:, 1, None] * self.freqs.cpu()]
        if mode == "3d":
            parts.append(pos[:, 2, None] * self.freqs2.cpu())
        ang = torch.cat(parts, -1).repeat_interleave(2, dim=-1)
        return ang.cos().to(device), ang.sin().to(device)
