"""Train the small KL autoencoder on sklearn's bundled digits (no download): `starflow train-autoencoder`."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .small_kl import SmallKLAutoencoder, SmallKLConfig

__all__ = ["digits_images", "moving_digit_frames", "train_small_autoencoder", "reconstruction_mse"]


def digits_images() -> torch.Tensor:
    """sklearn's 1797 8x8 digits as (N, 1, 8, 8) float32 in [-1, 1] (pixel values 0..16)."""
    from sklearn.datasets import load_digits

    data = torch.from_numpy(load_digits().images).float()  # (N, 8, 8) in [0, 16]
    return (data / 8.0 - 1.0).unsqueeze(1)


def moving_digit_frames(canvas: int = 16, num_frames: int = 8, num_videos: int = 2000, speed: int = 4,
                        start: str = "any", align: bool = False, motion: str = "bounce") -> torch.Tensor:
    """Every frame of the moving-digits *training* videos as (N * T, 1, canvas, canvas) in [-1, 1]: what a
    video model in this autoencoder's latent space is trained on (the held-out videos are not seen)."""
    from ..data import MovingDigitsDataset
    from ..data.base import to_unit_range
    from ..data.digits import DIGITS_LEVELS

    videos = MovingDigitsDataset("train", num_videos=num_videos, canvas=canvas, num_frames=num_frames,
                                 speed=speed, start=start, align=align, motion=motion).values
    return to_unit_range(videos.flatten(0, 1), DIGITS_LEVELS)


@torch.no_grad()
def reconstruction_mse(ae, images: torch.Tensor, *, sample: bool = False, batch_size: int = 512) -> float:
    """Mean squared error of decode(encode(x)) over `images` (posterior mean unless sample=True)."""
    total, n = 0.0, 0
    for xb in images.split(batch_size):
        xb = xb.to(ae.device)
        total += F.mse_loss(ae.decode(ae.encode(xb, sample=sample)), xb, reduction="sum").item()
        n += xb.numel()
    return total / n


@torch.no_grad()
def _normalised(ae: SmallKLAutoencoder, images: torch.Tensor, generator: torch.Generator) -> SmallKLAutoencoder:
    """The trained autoencoder with shift/scale measured so that sampled latents of the training data have
    mean 0 and std 1: a new model from the completed config, with the same weights."""
    zs = []
    for xb in images.split(512):
        mean, logvar = ae.posterior(xb.to(ae.device))
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        zs.append(mean + (0.5 * logvar).exp() * eps)
    z = torch.cat(zs)
    cfg = dataclasses.replace(ae.config, shift_factor=float(z.mean()),
                              scaling_factor=float(1.0 / z.std().clamp_min(1e-6)))
    out = SmallKLAutoencoder(cfg).to(ae.device)
    out.load_state_dict(ae.state_dict())
    return out.eval()


def train_small_autoencoder(out_dir: str | Path, steps: int = 2000, seed: int = 0, *, batch_size: int = 128,
                            lr: float = 2e-3, latent_channels: int = 4, hidden_channels: Sequence[int] = (32, 64),
                            kl_weight: float = 1e-3, device: str | torch.device = "cpu", progress: bool = True,
                            images: torch.Tensor | None = None, layout: str = "conv", patch: int = 4) -> Path:
    """Train a SmallKLAutoencoder on the digits (or `images`, (N,C,H,W) in [-1,1]) and save it to out_dir.

    layout / patch: the architecture (SmallKLConfig): "conv" (stride-2 steps) or "patch" (one token per
    patch x patch pixels, exactly shift-equivariant by whole patches).
    Loss: mean squared reconstruction error + kl_weight * mean KL(q(z|x) || N(0, I)) per latent element.
    Returns out_dir, which then loads with load_autoencoder(f"kl:{out_dir}").
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not kl_weight >= 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    images = digits_images() if images is None else images.float()
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = SmallKLConfig(in_channels=images.shape[1], latent_channels=latent_channels,
                        hidden_channels=[int(c) for c in hidden_channels], layout=layout, patch=patch)
    if images.shape[-1] % cfg.spatial_factor or images.shape[-2] % cfg.spatial_factor:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the spatial factor "
                         f"{cfg.spatial_factor}")
    ae = SmallKLAutoencoder(cfg).to(device).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    data = images.to(device)
    start = time.time()
    bar = tqdm(range(steps), desc="train-autoencoder", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, data.shape[0], (min(batch_size, data.shape[0]),), generator=gen)
        x = data[idx.to(device)]
        mean, logvar = ae.posterior(x)
        eps = torch.randn(mean.shape, generator=gen).to(mean)
        recon = ae.decode_raw(mean + (0.5 * logvar).exp() * eps)
        rec = F.mse_loss(recon, x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.3f}", refresh=False)
    ae = _normalised(ae.eval(), data, gen).freeze()
    out = ae.save_pretrained(out_dir)
    log = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
           "num_images": int(data.shape[0]), "recon_mse": reconstruction_mse(ae, data),
           "recon_mse_sampled": reconstruction_mse(ae, data, sample=True), "seconds": round(time.time() - start, 2)}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return out
