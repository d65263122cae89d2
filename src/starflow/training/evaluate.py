"""Held-out bits/dim and sample grids during training.

Held-out bits/dim follows the likelihood protocol: every held-out item, `draws` dequantisation (or
noise) draws each, from a generator keyed by (fixed seed, draw, item index), so the figure of two runs
compares directly, and an item's draws do not depend on the chunk, subset or process count it is in.
Every process takes its slice of each chunk (padded to equal sizes: under FSDP all processes must run
the same number of forward passes) and the sums are reduced.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data import QuantizedDataset
from ..flow.model import StarFlow
from .distributed import DistContext
from .inputs import Conditioner, InputPipeline

__all__ = ["heldout_bpd", "sample_grid", "EVAL_SEED"]

EVAL_SEED = 20250  # fixed: held-out draws must not depend on the training seed
LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def heldout_bpd(forward, dataset: QuantizedDataset, pipe: InputPipeline, ctx: DistContext, draws: int = 4,
                chunk: int = 512, max_items: int = 0) -> float:
    """Mean bits/dim over held-out items and draws. `forward(x, y) -> (loss_z, loss_logdet, reg)`."""
    n = len(dataset) if max_items <= 0 else min(max_items, len(dataset))
    world = ctx.world
    chunk = max(world, chunk - chunk % world)
    total = torch.zeros(2, dtype=torch.float64)
    for d in range(draws):
        for c0 in range(0, n, chunk):
            idx = torch.arange(c0, min(c0 + chunk, n))
            valid = torch.ones(len(idx), dtype=torch.bool)
            pad = (-len(idx)) % world
            if pad:  # repeat the first item; its result is masked out
                idx = torch.cat([idx, idx[:1].repeat(pad)])
                valid = torch.cat([valid, torch.zeros(pad, dtype=torch.bool)])
            local = len(idx) // world
            lo = ctx.rank * local
            sl = slice(lo, lo + local)
            batch = dataset.get_batch(idx[sl])
            drawn = pipe.item_draws(EVAL_SEED, (d,), idx[sl].tolist(), pipe.item_shape(batch))
            inp = pipe.make(batch, drawn, drop_p=0.0)
            loss_z, loss_logdet, _ = forward(inp.x, inp.y)
            dims = inp.x[0].numel()
            nll = pipe.nll_of_data(dims * (loss_z.double() + loss_logdet.double()) + 0.5 * dims * LOG_2PI, inp)
            bpd = pipe.nll_to_bpd(nll, dims, batch.levels).cpu()
            m = valid[sl]
            total += torch.stack([bpd[m].sum(), m.sum().double()])
    total = ctx.all_sum(total)
    return float(total[0] / total[1])


@torch.no_grad()
def sample_grid(model: StarFlow, cond: Conditioner, item_shape: tuple[int, ...], path: Path, *, count: int,
                guidance: float, noise_std: float, ae=None, class_count: int = 0, captions: list[str] | None = None,
                seed: int = 0, to_data=None) -> Path:
    """Sample `count` items (one per class / caption in turn), denoise and decode them, save a PNG grid."""
    from ..sampling.denoise import learned_denoise, score_denoise
    from ..sampling.sample import SamplerOptions, sample
    from .plots import save_grid

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((count,) + tuple(item_shape), generator=g).to(device)
    y = y_null = None
    if cond.mode == "labels":
        y = cond.prompts([i % max(class_count, 1) for i in range(count)])
    elif cond.mode == "text":
        caps = captions or [""]
        y = cond.prompts([caps[i % len(caps)] for i in range(count)])
    if y is not None:
        y_null = cond.null(count)
    opts = SamplerOptions(method="jacobi", guidance=guidance if y is not None else 0.0)
    x = sample(model, z, y, y_null, opts)
    if noise_std > 0:
        if model.learnable_self_denoiser is not None:
            x = learned_denoise(model, x, y, noise_std)
        else:
            x = score_denoise(model, x, y, noise_std)
    if to_data is not None:  # e.g. undo the logit transform
        x = to_data(x)
    if ae is not None:
        x = ae.decode(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_grid(x, path)
