"""Decoder fine-tuning for noisy latents (the official finetune_decoder.py, without its GAN term).

STARFlow models data with Gaussian noise of std sigma added in latent space; samples therefore come
out as noisy latents. The official recipe fine-tunes the decoder to map decode(z + sigma * eps) back
to the clean image, with the encoder frozen (its sampled latents are computed without gradients).
Loss: L2 between image and reconstruction in [0, 1] pixel scale (as the official loss module sees
them), plus `perceptual_weight` * LPIPS when its weights are available locally.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from ..strict import check_types, from_mapping
from .base import Autoencoder, randn_like

__all__ = ["FinetuneConfig", "finetune_decoder"]


@dataclass
class FinetuneConfig:
    noise_std: float = 0.3        # the flow's training noise level (official configs: 0.3 images, 0.5 video)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    perceptual_weight: float = 1.0
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FinetuneConfig":
        return from_mapping(cls, d, "finetune config")

    def __post_init__(self):
        check_types(self)
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {self.perceptual_weight}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finetune_decoder(ae: Autoencoder, images: torch.Tensor, config: FinetuneConfig | None = None, *,
                     perceptual: torch.nn.Module | None = None, progress: bool = True) -> dict[str, list[float]]:
    """Fine-tune `ae`'s decoder in place on `images` ((N,C,H,W) or (N,T,C,H,W) in [-1,1], kept on CPU).

    perceptual: an LPIPS-like module d(x, y) -> (N,) on [-1,1] images, or None for L2 only.
    Returns the per-step loss history {"loss", "l2", "perceptual"}. The autoencoder ends frozen again.
    """
    cfg = config or FinetuneConfig()
    if images.dim() not in (4, 5) or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (N,C,H,W) or (N,T,C,H,W) tensor, got {tuple(images.shape)}")
    params = ae.decoder_parameters()  # raises for autoencoders without a decoder (identity)
    ae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    ae.eval()  # no batch statistics anywhere; keeps dropout (if any) off as in inference
    device = ae.device
    if perceptual is not None:
        perceptual = perceptual.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.1)
    hist: dict[str, list[float]] = {"loss": [], "l2": [], "perceptual": []}
    try:
        for _ in tqdm(range(cfg.steps), desc="finetune-decoder", disable=not progress):
            idx = torch.randint(0, images.shape[0], (min(cfg.batch_size, images.shape[0]),), generator=gen)
            x = images[idx].to(device).float()
            with torch.no_grad():
                z = ae.encode(x, generator=gen)  # sampled latents, as the official code
                z = z + cfg.noise_std * randn_like(z, gen)
            x_hat = ae.decode(z)
            if x_hat.shape != x.shape:
                raise ValueError(f"decode(encode(x)) has shape {tuple(x_hat.shape)} but x has {tuple(x.shape)}")
            l2 = F.mse_loss(x_hat * 0.5 + 0.5, x * 0.5 + 0.5)
            loss, lp = l2, torch.zeros(())
            if perceptual is not None and cfg.perceptual_weight > 0:
                flat = (lambda t: rearrange(t, "b t c h w -> (b t) c h w")) if x.dim() == 5 else (lambda t: t)
                lp = perceptual(flat(x_hat), flat(x)).mean()
                loss = loss + cfg.perceptual_weight * lp
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
            hist["l2"].append(l2.item())
            hist["perceptual"].append(float(lp.detach()))
    finally:
        ae.freeze()
    return hist

