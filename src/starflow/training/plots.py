"""Training figures: loss / bits-per-dim curves and sample grids (images, or videos as frame strips)."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["plot_curves", "save_grid"]


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


def save_grid(samples: torch.Tensor, path: str | Path, scale: int = 0) -> Path:
    """samples in [-1, 1]: (B, C, H, W) -> a near-square grid; (B, T, C, H, W) -> one row of frames per
    sample. Small images are upscaled (nearest) to be visible; `scale` 0 picks a factor. The pixels go
    through the pipelines' writer (data.media), so training grids and generated files show the same bytes."""
    from ..data.media import make_grid, save_image

    x = samples.detach()
    if x.dim() not in (4, 5):
        raise ValueError(f"samples must be (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}")
    nrow = x.size(1) if x.dim() == 5 else None
    x = x.flatten(0, 1) if x.dim() == 5 else x
    if x.size(1) not in (1, 3):   # e.g. 4 latent channels: the first three as RGB
        x = x[:, :3]
    grid = make_grid(x, nrow, padding=1, pad_value=128)
    return save_image(grid, path, scale=scale or max(1, 256 // max(grid.shape[:2])))
