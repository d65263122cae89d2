"""Autoencoders: identity (pixels), SD-VAE, Wan2.2 video VAE, and a small KL autoencoder trained offline.

    ae = load_autoencoder(spec)
    spec: None | "identity[:channels]" | "sd-vae:<dir or hub id>" | "wan:<dir or hub id>[:temporal_scale]"
          | "kl:<dir>"
"""
from __future__ import annotations

import torch

from ..conditioning.offline import MissingWeightsError
from .base import Autoencoder, split_spec_scale
from .finetune import FinetuneConfig, finetune_decoder
from .identity import IdentityAutoencoder
from .perceptual import LPIPS, find_perceptual_weights
from .sdvae import SDVAE
from .small_kl import SmallKLAutoencoder, SmallKLConfig
from .train_small import digits_images, reconstruction_mse, train_small_autoencoder
from .wan import OFFICIAL_TEMPORAL_SCALE, WanVAE

__all__ = ["load_autoencoder", "Autoencoder", "IdentityAutoencoder", "SDVAE", "WanVAE", "SmallKLAutoencoder",
           "SmallKLConfig", "train_small_autoencoder", "digits_images", "reconstruction_mse", "finetune_decoder",
           "FinetuneConfig", "LPIPS", "find_perceptual_weights", "autoencoder_spec_from_official",
           "MissingWeightsError", "OFFICIAL_TEMPORAL_SCALE"]

_FORMS = "'identity', 'sd-vae:<dir or hub id>', 'wan:<dir or hub id>[:temporal_scale]' or 'kl:<dir>'"


def load_autoencoder(spec: str | None, *, device: str | torch.device | None = None,
                     dtype: torch.dtype | None = None) -> Autoencoder:
    """Build a frozen autoencoder from a spec (see the module docstring). Never downloads.

    For "wan:", the temporal scale defaults to the official STARFlow-V value 0.6; write ':1' to disable it.
    dtype applies to the diffusers VAEs (latents and decoded pixels are returned as float32).
    """
    spec = (spec or "identity").strip()
    kind, _, arg = spec.partition(":")
    if kind in ("identity", "none", "pixels"):
        try:
            ae: Autoencoder = IdentityAutoencoder(int(arg) if arg else None)
        except ValueError:
            raise ValueError(f"autoencoder spec {spec!r}: expected 'identity' or 'identity:<channels>'") from None
    elif kind == "sd-vae":
        ae = SDVAE.from_pretrained(_need(arg, spec), dtype=dtype)
    elif kind == "wan":
        ref, scale = split_spec_scale(_need(arg, spec))
        ae = WanVAE.from_pretrained(ref, temporal_scale=OFFICIAL_TEMPORAL_SCALE if scale is None else scale,
                                    dtype=dtype)
    elif kind == "kl":
        ae = SmallKLAutoencoder.from_pretrained(_need(arg, spec))
        if dtype is not None:
            ae = ae.to(dtype)
    else:
        hint = ""
        if "/" in spec:
            try:
                hint = f" (an official `vae:` value? try {autoencoder_spec_from_official(spec)!r})"
            except ValueError:
                pass
        raise ValueError(f"unknown autoencoder spec {spec!r}{hint}; expected {_FORMS}")
    # the normalised spec this autoencoder was built from, so pipelines can record it
    ae.spec = f"wan:{ref}:{ae.temporal_scale:g}" if kind == "wan" else spec
    if device is not None:
        ae = ae.to(device)
    return ae


def _need(arg: str, spec: str) -> str:
    if not arg:
        raise ValueError(f"autoencoder spec {spec!r} needs a directory or hub id after the ':'")
    return arg


def autoencoder_spec_from_official(vae: str | None) -> str:
    """Map an official config's `vae:` value to our spec.

    'stabilityai/sd-vae-ft-ema' -> 'sd-vae:stabilityai/sd-vae-ft-ema';
    'Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6' -> 'wan:Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6' (no suffix -> ':1',
    the official default).
    """
    if vae is None or vae in ("", "none", "None"):
        return "identity"
    ref, scale = split_spec_scale(vae)
    if "Wan2.2" in ref:
        if not ref.endswith("-Diffusers"):
            ref = ref + "-Diffusers"  # the official code fetches the raw .pth of this repo; we read diffusers
        return f"wan:{ref}:{1.0 if scale is None else scale:g}"
    if "Wan" in ref:
        raise ValueError(f"official VAE {vae!r}: only the Wan2.2 VAE is supported")
    return f"sd-vae:{ref}"
