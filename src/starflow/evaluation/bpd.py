"""Held-out bits/dim as papers report it: exact, batched, streaming, resumable, distributed.

The protocol is the one the training loop evaluates with (`training.evaluate.heldout_bpd`): every item gets
`draws` dequantisation (or Gaussian noise) draws from a generator keyed by (EVAL_SEED, draw, item index), so an
item's draws do not depend on the batch, the process count or where a resumed run started, and the figure of a
trained model equals the training run's own held-out figure. The input transform the model was trained behind
(logit, `data.gaussianize`) is counted exactly, so pixel bits/dim stay those of the integer data.

Items are read one batch at a time (no dataset in memory). After every batch the running sums go to a small
JSON file; a run started again with the same settings continues after the last finished batch. Under torchrun
every process takes its share of each batch and the sums are reduced, so the figure is that of one process.

The standard error is over items: each item's bits/dim averaged over its draws, then std / sqrt(items).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import QuantizedDataset
from ..flow.io import atomic_write_text
from ..flow.likelihood import nll
from ..flow.model import StarFlow
from ..training.distributed import DistContext
from ..training.evaluate import EVAL_SEED
from ..training.inputs import InputPipeline

__all__ = ["BpdResult", "evaluate_bpd", "bpd_protocol", "PARTIAL_FORMAT"]

PARTIAL_FORMAT = "starflow-bpd-partial-1"


@dataclass
class BpdResult:
    bpd: float                      # mean over items and draws
    stderr: float                   # standard error over items (each item averaged over its draws)
    items: int
    draws: int
    per_draw: list[float]           # mean over items of each draw
    unit: str                       # "bits/dim" (pixels) or "bits per latent dimension"
    protocol: dict[str, Any] = field(default_factory=dict)
    resumed_at: int = 0             # items already done when this run started (from the partial-results file)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bpd_protocol(pipe: InputPipeline) -> tuple[dict[str, Any], str]:
    """What the figure means: the noise protocol, the input transform, pixel or latent space; and its unit."""
    d = pipe.data
    if d.dequantize:
        noise = {"kind": "uniform dequantisation", "formula": "x = (v + u) 2/L - 1, u ~ U[0, 1)"}
    elif d.noise_levels:
        noise = {"kind": "gaussian", "sigma": list(d.noise_levels), "formula": "x = v 2/(L-1) - 1 + sigma eps"}
    elif d.noise_std > 0:
        noise = {"kind": "gaussian", "sigma": d.noise_std, "formula": "x = v 2/(L-1) - 1 + sigma eps"}
    else:
        noise = {"kind": "none (continuous data as given)"}
    tr = pipe.transform
    latent = pipe.ae is not None
    proto = {"noise": noise, "input_transform": tr.info() if tr is not None else None,
             "space": "latent" if latent else "pixels", "eval_seed": EVAL_SEED}
    if latent:
        proto["autoencoder"] = str(getattr(pipe.ae, "spec", None) or type(pipe.ae).__name__)
        proto["note"] = ("bits per latent dimension of the autoencoder's latents (posterior mean): not comparable "
                         "with pixel bits/dim")
        return proto, "bits per latent dimension"
    return proto, "bits/dim"


def _read_partial(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a partial-results file ({e}); delete it to start over") from None
    if state.get("format") != PARTIAL_FORMAT:
        raise ValueError(f"{path}: not a starflow bits/dim partial-results file; delete it or choose another")
    if state.get("settings") != settings:
        old, new = state.get("settings") or {}, settings
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{path} holds a partial evaluation with other settings ({', '.join(diff)} differ): "
                         f"delete it to start over, or evaluate into another folder")
    return state


@torch.no_grad()
def evaluate_bpd(model: StarFlow, dataset: QuantizedDataset, pipe: InputPipeline, ctx: DistContext | None = None, *,
                 draws: int = 4, batch_size: int = 64, max_items: int = 0, partial: str | Path | None = None,
                 settings: dict | None = None, progress: bool = True) -> BpdResult:
    """Bits/dim of `dataset` under `pipe`'s protocol (the conditioning of each item included, never dropped).

    partial: the partial-results file (resume when it exists and its `settings` equal these; rank 0 writes it).
    settings: everything that defines the figure (model, data, protocol...), stored in the partial file."""
    ctx = ctx or DistContext()
    if draws < 1 or batch_size < 1:
        raise ValueError("draws and batch_size must be >= 1")
    n = len(dataset) if max_items <= 0 else min(max_items, len(dataset))
    if n < 1:
        raise ValueError("the dataset has no items to evaluate")
    proto, unit = bpd_protocol(pipe)
    settings = {**(settings or {}), "items": n, "draws": draws, "batch_size": batch_size, "protocol": proto}
    settings = json.loads(json.dumps(settings, default=str))   # the form it has once read back
    partial = Path(partial) if partial is not None else None
    # sums: per-draw bpd sums (draws), then sum and sum of squares of the item means, then the item count
    sums = torch.zeros(draws + 3, dtype=torch.float64)
    start = 0
    state = _read_partial(partial, settings) if partial is not None else None
    if state is not None:
        start = int(state["next_item"])
        sums = torch.tensor(state["sums"], dtype=torch.float64)
    resumed_at = start
    model.eval()
    bar = tqdm(total=n, initial=start, unit="item", desc="bits/dim", dynamic_ncols=True,
               disable=not (progress and ctx.is_main))
    for b0 in range(start, n, batch_size):
        idx = torch.arange(b0, min(b0 + batch_size, n))
        mine = idx.tensor_split(ctx.world)[ctx.rank]             # this process's share of the batch
        local = torch.zeros(draws + 3, dtype=torch.float64)
        if len(mine):
            batch = dataset.get_batch(mine)
            shape = pipe.item_shape(batch)
            per_item = torch.zeros(len(mine), draws, dtype=torch.float64)
            for d in range(draws):
                drawn = pipe.item_draws(EVAL_SEED, (d,), mine.tolist(), shape)
                inp = pipe.make(batch, drawn, drop_p=0.0)
                dims = inp.x[0].numel()
                nats = pipe.nll_of_data(nll(model, inp.x, inp.y).double(), inp)
                per_item[:, d] = pipe.nll_to_bpd(nats, dims, batch.levels).cpu()
            pipe._latents.clear()   # the latent cache keeps an item's encoding across its draws only
            item_mean = per_item.mean(1)
            local[:draws] = per_item.sum(0)
            local[draws:] = torch.stack([item_mean.sum(), item_mean.square().sum(), torch.tensor(float(len(mine)),
                                                                                                  dtype=torch.float64)])
        sums += ctx.all_sum(local).cpu()
        bar.update(len(idx))
        if partial is not None and ctx.is_main:
            partial.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(partial, json.dumps({"format": PARTIAL_FORMAT, "settings": settings,
                                                   "next_item": int(idx[-1]) + 1, "sums": sums.tolist()}))
    bar.close()
    ctx.barrier()
    count = float(sums[draws + 2])
    if count != n:
        raise RuntimeError(f"evaluated {count:.0f} items instead of {n}: the partial-results file does not match")
    per_draw = (sums[:draws] / count).tolist()
    mean = float(sums[:draws].sum() / (count * draws))
    m1, m2 = float(sums[draws]) / count, float(sums[draws + 1]) / count
    var = max(m2 - m1 * m1, 0.0) * count / (count - 1) if count > 1 else float("nan")
    return BpdResult(mean, math.sqrt(var / count) if count > 1 else float("nan"), n, draws, per_draw, unit, proto,
                     resumed_at)
