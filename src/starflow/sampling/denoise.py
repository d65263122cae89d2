"""One-step denoising after sampling: the flow's own score (Tweedie), or the learnable denoiser."""
from __future__ import annotations

import functools
import math

import torch

from ..flow.model import Denoiser, StarFlow
from ..nn.packed import packed_linears
from ..nn.weight_cache import one_call
from .draft import low_copy, native_bf16, no_wider
from .options import DENOISER_PRECISIONS

__all__ = ["score_denoise", "learned_denoise", "learned_denoise_video", "denoiser_packed", "denoiser_for",
           "in_windows", "DENOISER_NOISE_CONST"]

DENOISER_NOISE_CONST = 0.3  # official constant: the denoiser predicts noise in units of 0.3


def _check_sigma(name: str, value) -> None:
    try:
        ok = math.isfinite(float(value)) and float(value) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0 (0: no denoising), got {value!r}")


def _finite_items(fn):
    """Apply fn(model, x, y, ...) to the items of x that are finite; the others (a sampler's overflow,
    see sampling.sample) pass through untouched instead of failing the whole batch."""
    @functools.wraps(fn)
    def wrapper(model, x, y, *args, **kwargs):
        for i, name in enumerate(("noise_std", "next_noise_std")):   # a NaN sigma would make every item NaN
            if i < len(args):
                _check_sigma(name, args[i])
            elif name in kwargs:
                _check_sigma(name, kwargs[name])
        ok = torch.isfinite(x.flatten(1)).all(1)                  # (B,)
        if bool(ok.all()):
            return fn(model, x, y, *args, **kwargs)
        n = kwargs.get("last_frames")
        out = (x if n is None else x[:, x.size(1) - n:]).clone()
        if bool(ok.any()):
            out[ok] = fn(model, x[ok], None if y is None else y[ok], *args, **kwargs)
        return out
    return wrapper


@_finite_items
def score_denoise(model: StarFlow, x: torch.Tensor, y: torch.Tensor | None, noise_std: float) -> torch.Tensor:
    """x + noise_std^2 * grad_x log p(x | y), with log p the flow's exact log-likelihood (per sample)."""
    if noise_std <= 0:
        return x
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg, y)
        loss_z, loss_logdet = model.loss_terms(out.z, out.logdets)
        # per-sample NLL (nats, up to a constant) = numel/B * (loss_z + loss_logdet); summed over the batch
        nll = (loss_z + loss_logdet).mean() * x.numel()
        (grad,) = torch.autograd.grad(nll, [xg])
    return (xg - noise_std ** 2 * grad).detach()


@_finite_items
@torch.no_grad()
def learned_denoise(model: StarFlow, x: torch.Tensor, y: torch.Tensor | None, noise_std: float,
                    next_noise_std: float = 0.0, *, last_frames: int | None = None,
                    precision: str = "model") -> torch.Tensor:
    """Official update x - 0.3 * denoiser(x) * (sigma - sigma_next) / sigma.

    last_frames (videos): the update of the last that many frames only, (B, last_frames, C, H, W), each frame's
    prediction still made from every frame of x (StarFlow.denoise_output).
    precision (SamplerOptions.denoiser_precision): the denoiser that predicts (denoiser_for); the update is
    computed in x's dtype either way."""
    keep = x if last_frames is None else x[:, x.size(1) - last_frames:]
    if noise_std <= 0:
        return keep
    if next_noise_std > noise_std:
        raise ValueError(f"next_noise_std {next_noise_std} must not exceed noise_std {noise_std}")
    d = denoiser_for(model, precision)
    with packed_linears(d):    # its Linear weights packed (nn.packed), unless a caller holds them packed
        pred = model.denoise_output(x, y, last_frames, denoiser=d)
    return keep - pred * DENOISER_NOISE_CONST * (noise_std - next_noise_std) / noise_std


def denoiser_for(model: StarFlow, precision: str = "model") -> Denoiser:
    """The learnable denoiser that predicts under `precision`: the model's own ("model", or where its weights are
    no wider than bf16, or "auto" where bf16 matmuls are not native: sampling.draft.native_bf16), else a bf16 copy
    kept while the weights stay the same (sampling.draft.low_copy).

    Why bf16 is worth offering: the prediction enters the sample scaled by 0.3 (sigma - sigma_next) / sigma, so its
    bf16 rounding moves the sample by ~1e-3, the scale of the Jacobi sampler's own threshold, while the denoiser's
    products run at the bf16 rate (bench video model, 2-core Xeon with AMX: 0.25 -> 0.12 s for an 8-frame video,
    max change 0.003; benchmarks/RESULTS.md). Unlike the Jacobi draft nothing checks it in full precision after:
    "model" (the default) keeps the weights' precision."""
    if precision not in DENOISER_PRECISIONS:
        raise ValueError(f"denoiser precision must be one of {DENOISER_PRECISIONS}, not {precision!r}")
    d = model.learnable_self_denoiser
    if d is None:
        raise ValueError("this model has no learnable self-denoiser (learnable_self_denoiser=0)")
    w = d.proj_in.weight
    if precision == "model" or no_wider(w, torch.bfloat16) or (precision == "auto" and not native_bf16(w.device)):
        return d
    return low_copy(d, torch.bfloat16)


def denoiser_packed(model: StarFlow, precision: str = "model"):
    """The Linear weights of the denoiser that predicts (denoiser_for) packed (nn.packed) for a `with` block: around
    a loop of `learned_denoise` calls (a video's windows) they are packed once, not once a window."""
    return packed_linears(denoiser_for(model, precision))


def learned_denoise_video(model: StarFlow, x: torch.Tensor, y: torch.Tensor | None, noise_std: float,
                          window: int | None, precision: str = "model") -> torch.Tensor:
    """learned_denoise on a sampled video (B, T, C, H, W) in windows of `window` frames (in_windows, the model's
    denoiser_window as overlap), the denoiser's weights packed once for all the windows, each window computing
    only the frames it replaces."""
    # one_call: the kept bf16 copy and packed weights (nn.weight_cache) read each weight's sum once, not once a window
    with torch.no_grad(), one_call(), denoiser_packed(model, precision):     # packing needs gradients off
        return in_windows(lambda chunk, new: learned_denoise(model, chunk, y, noise_std, last_frames=new,
                                                             precision=precision), x,
                          window, model.config.denoiser_window)


def in_windows(fn, x: torch.Tensor, window: int | None, denoiser_window: int | None = None) -> torch.Tensor:
    """Apply a denoising step to a video x (B, T, ...) in windows of `window` frames (None: all at once), as the
    official sampler does: after the first window each step re-uses `overlap` frames (denoiser_window, or
    window - 1) as context and replaces only the new ones. The official loop goes on while its start is inside
    the video and then denoises chunks that replace no frame; it stops here once the last frame is replaced
    (the same output).

    fn(chunk, new) -> the denoised chunk, or only its last `new` frames: the ones the window replaces (the
    learnable denoiser then skips the context frames' outputs: learned_denoise's last_frames)."""
    T = x.size(1)
    steps = window or T
    x = x.clone()
    s, overlap = 0, 0
    while True:
        new = min(steps, T - s) - overlap
        out = fn(x[:, s:s + steps].clone(), new)
        x[:, s + overlap:s + steps] = out[:, out.size(1) - new:]
        if s + steps >= T:
            return x
        overlap = min(steps - 1 if denoiser_window is None else denoiser_window, steps - 1)
        s += steps - overlap
