"""Training figures: loss / bits-per-dim curves and sample grids (images, or videos as frame strips)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["plot_curves", "save_grid", "to_uint8"]


def plot_curves(rows: list[dict], path: str | Path) -> Path | None:
    """Loss and bits/dim against step: training rows ('loss', 'bpd') and evaluation rows ('eval_bpd')."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_bpd" in r]
    if not train and not evals:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        a1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    a1.set_xlabel("step")
    a1.set_ylabel("loss (official, nats / dim)")
    a1.set_title("training loss")
    if train and "bpd" in train[0]:
        a2.plot([r["step"] for r in train], [r["bpd"] for r in train], lw=1, label="train")
    if evals:
        a2.plot([r["step"] for r in evals], [r["eval_bpd"] for r in evals], "o-", label="held-out")
    a2.set_xlabel("step")
    a2.set_ylabel("bits / dim")
    a2.set_title("bits per dimension")
    a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 0..255."""
    return ((x.detach().float().nan_to_num(nan=-1.0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def save_grid(samples: torch.Tensor, path: str | Path, scale: int = 0) -> Path:
    """samples in [-1, 1]: (B, C, H, W) -> a near-square grid; (B, T, C, H, W) -> one row of frames per
    sample. Small images are upscaled (nearest) to be visible; `scale` 0 picks a factor."""
    from PIL import Image

    x = to_uint8(samples)
    if x.dim() == 4:
        B, C, H, W = x.shape
        cols = math.ceil(math.sqrt(B))
        rows = math.ceil(B / cols)
        cells = [x[i] for i in range(B)] + [torch.zeros_like(x[0])] * (rows * cols - B)
    elif x.dim() == 5:
        B, T, C, H, W = x.shape
        rows, cols = B, T
        cells = [x[b, t] for b in range(B) for t in range(T)]
    else:
        raise ValueError(f"samples must be (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}")
    pad = 1
    grid = torch.full((C, rows * (H + pad) + pad, cols * (W + pad) + pad), 128, dtype=torch.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = cell
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if C == 1 else arr[..., :3].astype(np.uint8))
    scale = scale or max(1, 256 // max(img.size))
    if scale > 1:
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path
