"""Wan2.2 video VAE through diffusers `AutoencoderKLWan` (official video config: Wan2.2-TI2V-5B's VAE).

The official STARFlow-V pipeline, reproduced here:
- a causal first frame, then chunks of 4 frames: T frames -> 1 + (T - 1) // 4 latent frames (81 -> 21);
  16x spatial for Wan2.2 (2x2 patchify, then three 2x downsamples), 48 latent channels;
- latents normalised per channel by the config's `latents_mean` / `latents_std`. As in the official
  Wan2.2 path, the posterior mean is normalised and the posterior noise is added after normalisation
  (z = (mu - mean) / std + sigma * eps);
- latent frames after the first multiplied by a temporal scale (0.6 in the official config
  'vae: Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6'), divided back before decoding;
- images go through as 1-frame videos (no temporal scale: they have only the first frame).
"""
from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange

from .base import Autoencoder, randn_like
from .sdvae import load_diffusers

__all__ = ["WanVAE", "OFFICIAL_TEMPORAL_SCALE", "WAN22_HUB_ID"]

OFFICIAL_TEMPORAL_SCALE = 0.6
WAN22_HUB_ID = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


class WanVAE(Autoencoder):
    def __init__(self, vae, temporal_scale: float = OFFICIAL_TEMPORAL_SCALE):
        super().__init__()
        if not temporal_scale > 0:
            raise ValueError(f"temporal_scale must be > 0, got {temporal_scale}")
        self.vae = vae
        cfg = vae.config
        z_dim = int(cfg.z_dim)
        mean, std = cfg.latents_mean, cfg.latents_std
        if len(mean) != z_dim or len(std) != z_dim:
            raise ValueError(f"Wan VAE config: latents_mean/latents_std have {len(mean)}/{len(std)} entries for "
                             f"z_dim={z_dim}")
        self.register_buffer("latents_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)  # (c,)
        self.register_buffer("latents_std", torch.tensor(std, dtype=torch.float32), persistent=False)    # (c,)
        self.temporal_scale = float(temporal_scale)
        patch = int(cfg.patch_size or 1)
        self.spatial_factor = patch * 2 ** (len(cfg.dim_mult) - 1)
        # diffusers encodes a first frame, then chunks of exactly 4 frames, whatever the config says
        self.temporal_factor = 4
        if sum(bool(t) for t in cfg.temperal_downsample) != 2:
            raise ValueError(f"Wan VAE config: temperal_downsample={cfg.temperal_downsample} does not give the 4x "
                             f"temporal compression that diffusers' chunked encoder assumes")
        self.latent_channels = z_dim
        self.in_channels = int(cfg.in_channels) // (patch * patch)
        self.freeze()

    @classmethod
    def from_pretrained(cls, ref: str, *, temporal_scale: float = OFFICIAL_TEMPORAL_SCALE,
                        dtype: torch.dtype | None = None) -> "WanVAE":
        from diffusers import AutoencoderKLWan

        if ref.endswith((".pth", ".pt", ".safetensors")):
            raise ValueError(f"Wan VAE: {ref} is a single weights file; pass a diffusers folder instead (for "
                             f"Wan2.2: the vae/ folder of {WAN22_HUB_ID})")
        vae = load_diffusers(AutoencoderKLWan, ref, what="Wan VAE", spec_prefix="wan:",
                             expected_class="AutoencoderKLWan", include="vae/*", dtype=dtype)
        return cls(vae, temporal_scale)

    def _norm_shape(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)  # broadcast over (B, c, T, h, w)
        return self.latents_mean.view(shape).to(z), self.latents_std.view(shape).to(z)

    def _encode_cthw(self, x: torch.Tensor, sample: bool, generator) -> torch.Tensor:
        """(B, C, T, H, W) pixels -> (B, c, T', h, w) normalised latents."""
        post = self.vae.encode(x.to(self.dtype)).latent_dist
        mean, std = self._norm_shape(post.mean)
        z = (post.mean - mean) / std
        if sample:
            z = z + post.std * randn_like(z, generator)
        return z.float()

    def _decode_cthw(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._norm_shape(z)
        return self.vae.decode((z * std + mean).to(self.dtype)).sample.float()

    def _encode_images(self, x, sample, generator):
        return self._encode_cthw(x.unsqueeze(2), sample, generator)[:, :, 0]  # (N, c, h, w)

    def _decode_images(self, z):
        return self._decode_cthw(z.unsqueeze(2))[:, :, 0]

    def _encode_video(self, x, sample, generator):
        T = x.shape[1]
        if (T - 1) % self.temporal_factor:
            raise ValueError(f"Wan VAE encodes 1 + 4k frames (a causal first frame, then chunks of 4); got {T} "
                             f"frames, which would silently drop the last {(T - 1) % 4}. Use e.g. "
                             f"{1 + (T - 1) // 4 * 4} or {1 + ((T - 1) // 4 + 1) * 4}")
        z = self._encode_cthw(rearrange(x, "b t c h w -> b c t h w"), sample, generator)
        z = rearrange(z, "b c t h w -> b t c h w")  # (B, T', c, h, w)
        if self.temporal_scale != 1:
            z = torch.cat([z[:, :1], z[:, 1:] * self.temporal_scale], dim=1)
        return z

    def _decode_video(self, z):
        if self.temporal_scale != 1:
            z = torch.cat([z[:, :1], z[:, 1:] / self.temporal_scale], dim=1)
        x = self._decode_cthw(rearrange(z, "b t c h w -> b c t h w"))
        return rearrange(x, "b c t h w -> b t c h w")  # (B, 1 + 4 (T' - 1), C, H, W)

    def decoder_parameters(self):
        return [p for m in (self.vae.decoder, self.vae.post_quant_conv) for p in m.parameters()]

    def save_pretrained(self, path):
        path = Path(path)
        self.vae.save_pretrained(str(path))
        return path

    def extra_repr(self) -> str:
        return (f"latent_channels={self.latent_channels}, spatial_factor={self.spatial_factor}, "
                f"temporal_factor={self.temporal_factor}, temporal_scale={self.temporal_scale}")
