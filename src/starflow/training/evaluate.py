"""Held-out bits/dim and sample grids during training.

Held-out bits/dim follows the likelihood protocol: every held-out item, `draws` dequantisation (or
noise) draws each, from a generator keyed by (fixed seed, draw, item index), so the figure of two runs
compares directly, and an item's draws do not depend on the chunk, subset or process count it is in.
Every process takes its slice of each chunk (padded to equal sizes: under FSDP all processes must run
the same number of forward passes) and the sums are reduced.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import QuantizedDataset
from ..flow.likelihood import nll_from_terms
from .distributed import DistContext
from .inputs import InputPipeline

__all__ = ["heldout_bpd", "sample_grid", "EVAL_SEED"]

EVAL_SEED = 20250  # fixed: held-out draws must not depend on the training seed


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
            nll = pipe.nll_of_data(nll_from_terms(loss_z, loss_logdet, dims), inp)
            bpd = pipe.nll_to_bpd(nll, dims, batch.levels).cpu()
            m = valid[sl]
            total += torch.stack([bpd[m].sum(), m.sum().double()])
    total = ctx.all_sum(total)
    return float(total[0] / total[1])


@torch.no_grad()
def sample_grid(pipe, path: Path, *, count: int, guidance: float, captions: list[str] | None = None,
                class_count: int = 0, item_shape: tuple[int, ...] = (), seed: int = 0) -> Path:
    """Sample `count` items with a pipeline (one per class / caption in turn: noise, guided Jacobi, the
    pipeline's denoising and decoding, exactly what `generate` runs) and save a PNG grid; videos are rows
    of frames."""
    from .plots import save_grid

    mode = "labels" if str(pipe.text_encoder_spec or "").startswith("labels:") else \
        ("text" if pipe.config.txt_dim > 0 else "none")
    prompts = None
    if mode == "labels":
        prompts = [str(i % max(class_count, 1)) for i in range(count)]
    elif mode == "text":
        caps = captions or [""]
        prompts = [caps[i % len(caps)] for i in range(count)]
    kw = dict(guidance=guidance if prompts is not None else 0.0, seed=seed, output_type="pt", progress=False,
              method="jacobi")
    if pipe.kind == "video":
        out = pipe(prompts, num_videos_per_prompt=1, num_videos=count, num_frames=item_shape[0], **kw).frames
    else:
        out = pipe(prompts, num_images_per_prompt=1, num_images=count, **kw).images
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_grid(out * 2 - 1, path)
