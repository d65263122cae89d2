"""Continuing a run from its checkpoints, and what a resume refuses or works around.

- The newest checkpoint that can be read is used: one with a truncated or unreadable file, NaN weights, or
  without the EMA file its run kept, gives way to the one before it, with a warning saying so (a kill or a full
  disk can damage the newest; the ones before it are whole). None readable: an error.
- A checkpoint saved by another model (the config's model section changed) is an error naming the keys that
  differ, never a fallback: every checkpoint of the run would be just as foreign.
- EMA turned on at a resume starts from the weights, turned off drops the averages: both are said.
- The metrics log is cut back to the rows it had when the checkpoint was saved.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..config import ConfigError
from ..flow.io import CheckpointError
from .checkpoint import TRAINING_FILE
from .distributed import load_model_state, load_optim_state
from .trainer import Progress, Trainer

__all__ = ["resume_run"]


def resume_run(tr: Trainer) -> Progress | None:
    """Restore `tr` from the newest usable checkpoint of its run: weights, optimisers, EMA, RNG, metrics."""
    candidates = tr.ckpt.candidates()
    if not candidates:
        return None
    for i, folder in enumerate(candidates):
        try:
            weights, state = tr.ckpt.load(folder)
            _check_resumable(tr, folder, weights, state)
            break
        except CheckpointError as e:
            if i + 1 == len(candidates):
                raise CheckpointError(f"no checkpoint in {tr.ckpt.dir} can be resumed from: {e}") from e
            _say(tr, f"{folder.name} cannot be resumed from: {e}; falling back to {candidates[i + 1].name}")
    load_model_state(tr.wrapped, tr.ctx, {f"model.{k}": v for k, v in weights["model"].items()})
    load_optim_state(tr.wrapped, tr.opt, state["optimizer"])
    if tr.den_opt is not None:
        load_optim_state(tr.wrapped, tr.den_opt, state["denoiser_optimizer"])
    if tr.ema is not None:
        if "ema" not in weights:
            _say(tr, f"optim.ema={tr.cfg.optim.ema} but {folder.name} was saved without an EMA: the EMA starts "
                     f"from the weights of step {state['step']}")
        src = weights.get("ema", weights["model"])
        tr.ema.load({f"model.{k}": v for k, v in src.items()}, int(state.get("ema_updates", 0)))
    elif "ema" in weights:
        _say(tr, f"{folder.name} holds EMA weights but optim.ema is 0: the run continues without them (its final/ "
                 f"model will be the raw weights)")
    p = Progress(int(state["step"]), float(state["elapsed"]), int(state["skipped"]), int(state["samples"]))
    rng = state.get("rng") or []
    if len(rng) == tr.ctx.world:
        torch.set_rng_state(rng[tr.ctx.rank])
    tr.metrics.resume(p.step, state.get("metrics_rows"))
    tr.ctx.barrier()
    return p


def _say(tr: Trainer, msg: str) -> None:
    """A resume decision the user must hear about: a warning, and a line of the run's log on rank 0."""
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    if tr.ctx.is_main and tr.cfg.log.progress:
        print(f"resume: {msg}", flush=True)


def _check_resumable(tr: Trainer, folder: Path, weights: dict, state: dict) -> None:
    """CheckpointError for a damaged checkpoint (an older one may do); ConfigError for one of another model."""
    if "model" not in weights:
        raise CheckpointError(f"{folder / 'model.safetensors'} is missing")
    own = {k: tuple(v.shape) for k, v in tr.module.model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights["model"].items()}
    if own != got:
        raise ConfigError(f"{folder.name} was saved by another model than this config builds "
                          f"({_model_difference(folder, tr.model_cfg.to_dict(), own, got)}): resume with the run's "
                          f"model settings, or start a new run (another log.out_dir, or --overwrite)")
    if tr.ema is not None and "ema" not in weights and "ema_updates" in state:
        raise CheckpointError(f"{folder / 'ema.safetensors'} is missing, although the run kept an EMA")
    if tr.den_opt is not None and "denoiser_optimizer" not in state:
        raise ConfigError(f"{folder.name} was saved without the learnable denoiser's optimiser")
    for stem, sd in weights.items():
        bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{folder / (stem + '.safetensors')} holds NaN or infinite values ({bad[0]})")


def _model_difference(folder: Path, ours: dict, own: dict, got: dict) -> str:
    """The model keys whose values differ between a checkpoint's training.json and this run, else the tensors."""
    try:
        theirs = json.loads((folder / TRAINING_FILE).read_text())["train"]["model"]
        diff = [f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted(set(ours) | set(theirs))
                if k != "extra" and theirs.get(k) != ours.get(k)]
        if diff:
            return "model." + "; model.".join(diff[:5])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shapes = [f"{k}: {got[k]} there, {own[k]} here" for k in own if k in got and got[k] != own[k]]
    only = sorted(set(own) ^ set(got))
    return "; ".join(shapes[:3] + ([f"{len(only)} tensors only in one of them"] if only else []))
