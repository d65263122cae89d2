"""SD-VAE through diffusers `AutoencoderKL` (official image configs: stabilityai/sd-vae-ft-ema).

latents = posterior sample * scaling_factor (0.18215 for SD-VAE), as the official code does; a
config `shift_factor` (SD3/Flux VAEs; None for SD-VAE) is subtracted first. Spatial factor
2 ** (number of down blocks - 1) = 8 for SD-VAE. Videos are encoded frame by frame.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..conditioning.offline import MissingWeightsError, hub_offline, resolve_pretrained
from .base import Autoencoder, randn_like

__all__ = ["SDVAE", "find_model_dir", "load_diffusers"]


def find_model_dir(path: Path, what: str) -> tuple[Path, str | None]:
    """(dir, subfolder): a diffusers model folder, or a pipeline folder whose `vae/` holds one."""
    if (path / "config.json").exists():
        return path, None
    if (path / "vae" / "config.json").exists():
        return path, "vae"
    raise MissingWeightsError(f"{what}: {path} has neither config.json nor vae/config.json; expected a diffusers "
                              f"model folder (config.json + diffusion_pytorch_model.safetensors)")


def load_diffusers(cls, ref: str, *, what: str, spec_prefix: str, expected_class: str, include: str | None,
                   dtype: torch.dtype | None):
    path = resolve_pretrained(ref, what=what, spec_prefix=spec_prefix, include=include)
    path, sub = find_model_dir(path, what)
    cfg_file = path / (sub or "") / "config.json"
    found = json.loads(cfg_file.read_text()).get("_class_name")
    if found is not None and found != expected_class:
        raise ValueError(f"{what}: {cfg_file} describes a {found}, not a {expected_class}; "
                         f"check the autoencoder spec prefix (sd-vae: for AutoencoderKL, wan: for AutoencoderKLWan)")
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    try:
        with hub_offline():
            # low_cpu_mem_usage=False: the fast path needs `accelerate`, which we do not depend on
            return cls.from_pretrained(str(path), subfolder=sub, local_files_only=True, low_cpu_mem_usage=False,
                                       **kwargs)
    except OSError as e:
        raise MissingWeightsError(f"{what}: could not load {path}: {e}") from e


class SDVAE(Autoencoder):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(cfg.shift_factor) if getattr(cfg, "shift_factor", None) is not None else 0.0
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.temporal_factor = 1
        self.latent_channels = int(cfg.latent_channels)
        self.in_channels = int(cfg.in_channels)
        self.freeze()

    @classmethod
    def from_pretrained(cls, ref: str, *, dtype: torch.dtype | None = None) -> "SDVAE":
        from diffusers import AutoencoderKL

        vae = load_diffusers(AutoencoderKL, ref, what="SD-VAE", spec_prefix="sd-vae:",
                             expected_class="AutoencoderKL", include=None, dtype=dtype)
        return cls(vae)

    def _encode_images(self, x, sample, generator):
        post = self.vae.encode(x.to(self.dtype)).latent_dist
        z = post.mean
        if sample:
            z = z + post.std * randn_like(z, generator)
        return ((z - self.shift_factor) * self.scaling_factor).float()  # (N, c, h, w)

    def _decode_images(self, z):
        z = z.to(self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float()  # (N, C, H, W)

    def decoder_parameters(self):
        mods = [self.vae.decoder] + ([self.vae.post_quant_conv] if self.vae.post_quant_conv is not None else [])
        return [p for m in mods for p in m.parameters()]

    def save_pretrained(self, path):
        path = Path(path)
        self.vae.save_pretrained(str(path))
        return path

    def extra_repr(self) -> str:
        return (f"scaling_factor={self.scaling_factor}, spatial_factor={self.spatial_factor}, "
                f"latent_channels={self.latent_channels}")
