"""Pixel space: the identity autoencoder (factors 1, latents are the pixels)."""
from __future__ import annotations

import torch

from .base import Autoencoder

__all__ = ["IdentityAutoencoder"]


class IdentityAutoencoder(Autoencoder):
    def __init__(self, channels: int | None = None):
        """channels: expected pixel channels, or None to accept any (latent_channels then follows the input)."""
        super().__init__()
        if channels is not None and channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.in_channels = self.latent_channels = channels

    def encode(self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_input(x, "encode", self.in_channels, 1)
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check_input(z, "decode", self.latent_channels, 1)
        return z

    def extra_repr(self) -> str:
        return f"channels={self.in_channels}"
