"""The autoencoder interface: images (B,C,H,W) and videos (B,T,C,H,W) in [-1,1] <-> latents.

Every autoencoder exposes `encode`, `decode`, `spatial_factor`, `temporal_factor`, `latent_channels`,
`in_channels` and `latent_shape`. Image autoencoders handle videos frame by frame (temporal factor 1).
Loaded autoencoders are frozen; `decoder_parameters()` names what decoder fine-tuning may train.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from einops import rearrange

__all__ = ["Autoencoder", "split_spec_scale", "randn_like"]


class Autoencoder(torch.nn.Module):
    spatial_factor: int = 1
    temporal_factor: int = 1
    latent_channels: int | None = None   # None: same as the input (identity)
    in_channels: int | None = None
    spec: str | None = None              # set by load_autoencoder: the spec it was built from

    # ---- to implement ---------------------------------------------------------------------------
    def _encode_images(self, x: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError  # (N, C, H, W) -> (N, c, h, w)

    def _decode_images(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # (N, c, h, w) -> (N, C, H, W)

    def _encode_video(self, x: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T', c, h, w); image autoencoders encode each frame."""
        B = x.shape[0]
        z = self._encode_images(rearrange(x, "b t c h w -> (b t) c h w"), sample, generator)
        return rearrange(z, "(b t) c h w -> b t c h w", b=B)

    def _decode_video(self, z: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        x = self._decode_images(rearrange(z, "b t c h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b t c h w", b=B)

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError(f"{type(self).__name__} has no trainable decoder")

    def save_pretrained(self, path: str | Path) -> Path:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    # ---- public ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B,C,H,W) or videos (B,T,C,H,W) in [-1,1] -> latents (B,c,h,w) / (B,T',c,h,w).

        sample: draw from the posterior as the official training does; False gives its mean.
        """
        self._check_input(x, "encode", self.in_channels, self.spatial_factor)
        return self._encode_video(x, sample, generator) if x.dim() == 5 else self._encode_images(x, sample, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B,c,h,w) / (B,T',c,h,w) -> images / videos, roughly in [-1,1] (not clamped)."""
        self._check_input(z, "decode", self.latent_channels, 1)
        return self._decode_video(z) if z.dim() == 5 else self._decode_images(z)

    def latent_frames(self, frames: int) -> int:
        return frames if self.temporal_factor == 1 else 1 + (frames - 1) // self.temporal_factor

    def latent_shape(self, shape: Iterable[int]) -> tuple[int, ...]:
        """Shape of `encode`'s output for an input of this shape."""
        shape = tuple(int(s) for s in shape)
        c = self.latent_channels if self.latent_channels is not None else shape[-3]
        h, w = shape[-2] // self.spatial_factor, shape[-1] // self.spatial_factor
        if len(shape) == 4:
            return (shape[0], c, h, w)
        if len(shape) == 5:
            return (shape[0], self.latent_frames(shape[1]), c, h, w)
        raise ValueError(f"expected an image (B,C,H,W) or video (B,T,C,H,W) shape, got {shape}")

    def freeze(self) -> "Autoencoder":
        self.requires_grad_(False)
        return self.eval()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def _check_input(self, x: torch.Tensor, op: str, channels: int | None, multiple: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: expected a tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            raise ValueError(f"{op}: expected images (B,C,H,W) or videos (B,T,C,H,W), got shape {tuple(x.shape)}")
        if channels is not None and x.shape[-3] != channels:
            raise ValueError(f"{op}: expected {channels} channels (dim -3) for {type(self).__name__}, "
                             f"got shape {tuple(x.shape)}; videos are (B,T,C,H,W)")
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(f"{op}: height and width must be multiples of {multiple} (the spatial factor), "
                             f"got {tuple(x.shape[-2:])}")


def randn_like(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like z, drawn on the generator's device (a CPU generator works for CUDA z)."""
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)


def split_spec_scale(arg: str) -> tuple[str, float | None]:
    """'dir:0.6' -> ('dir', 0.6); 'dir' -> ('dir', None). Only a trailing number counts as the scale."""
    head, sep, tail = arg.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return arg, None
