"""One autoregressive affine flow block: a causal trunk predicting each token's affine map from earlier tokens."""
from __future__ import annotations

import torch

from ..nn.trunk import Trunk
from .affine import affine_params, forward_affine, guide
from .permutation import permute

__all__ = ["FlowBlock", "IdentityFlowBlock"]


class FlowBlock(Trunk):
    """Token t's (scale, shift) comes from tokens < t in this block's order.

    The first token is conditioned on a learned start-of-sequence token (`sos`), or, without one, is
    left unchanged (the head's outputs are shifted right by one).
    """

    def __init__(self, in_channels: int, channels: int, num_layers: int, head_dim: int, *, order: str,
                 sos: bool, softplus: bool, num_positions: int | None = None, **trunk_kwargs):
        super().__init__(in_channels, 2 * in_channels, channels, num_layers, head_dim, **trunk_kwargs)
        self.order = order
        self.use_sos = sos
        self.softplus = softplus
        if sos:
            self.sos_embed = torch.nn.Parameter(torch.randn(1, 1, in_channels))
        # learned positions (rope=0): one table for a frame, shared by all frames of a video
        self.pos_embed = torch.nn.Parameter(torch.randn(num_positions, channels) * 1e-2) if num_positions else None

    # -- pieces shared with the samplers -------------------------------------------------------
    def permute(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return permute(x, self.order, frames)

    def positions_embed(self, n_tokens: int, frames: int) -> torch.Tensor | None:
        """Learned positions (N, D) in this block's order, or None with RoPE."""
        if self.pos_embed is None:
            return None
        pe = self.pos_embed.repeat(max(frames, 1), 1)
        if pe.size(0) != n_tokens:
            raise ValueError(f"learned positions cover {self.pos_embed.size(0)} tokens per frame; the input has "
                             f"{n_tokens // max(frames, 1)}")
        return permute(pe[None], self.order, frames)[0]

    def input_sequence(self, xp: torch.Tensor) -> torch.Tensor:
        """Tokens in block order (B, n, C) -> the sequence the trunk reads from: the SOS embedding followed
        by the tokens, or (no SOS) the tokens themselves, whose first one the block leaves unchanged.

        Trunk input position p is element p of this sequence, and its output gives the affine map of
        element p + 1: the likelihood pass, both samplers and the sliding window's re-encoded context
        all read the trunk's input as `input_sequence(...)[:, :-1]`."""
        if not self.use_sos:
            return xp
        return torch.cat([self.sos_embed.expand(xp.size(0), -1, -1).to(xp.dtype), xp], dim=1)

    def params(self, raw: torch.Tensor, guidance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = affine_params(raw, self.softplus)
        if guidance > 0:
            scale, shift = guide(scale, shift, guidance)
        return scale, shift

    # -- likelihood direction --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None, rope=None, frames: int = 1,
                guidance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, C) tokens in raster order -> z (B, N, C) raster order, logdet (B, N, C) in block order."""
        xp = self.permute(x, frames)
        seq = self.input_sequence(xp)
        pe = self.positions_embed(x.size(1), frames)
        raw = self.run(seq[:, :-1], text, rope=rope, pos_embed=None if pe is None else pe[:seq.size(1) - 1])
        if not self.use_sos:  # token 0 is kept as is (identity parameters); the rest are predicted
            raw = torch.cat([torch.zeros_like(raw[:, :1]), raw], dim=1)
        scale, shift = self.params(raw, guidance)
        z, logdet = forward_affine(xp, scale, shift)
        return self.permute(z, frames).to(x.dtype), logdet


class IdentityFlowBlock(torch.nn.Module):
    """A block with zero layers (`layers_per_block` entry 0): the identity, log-det 0."""

    order = "identity"
    use_sos = False
    conditioned = False

    def forward(self, x, text=None, rope=None, frames: int = 1, guidance: float = 0.0):
        return x, x.new_zeros(x.size(0))
