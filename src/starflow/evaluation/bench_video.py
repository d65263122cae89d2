"""`starflow bench` on a video model: sequential and Jacobi sampling of a video, and long videos.

Protocol (the speed issue's): batch 2, guidance 2.0, Jacobi threshold 1e-3, `video_frames` (8) latent frames,
the learnable denoiser after sampling (in windows of the attention window, as the official sampler does), so
every figure is the time from noise to denoised latents. A video longer than the model's `local_attn_window`
slides that window, re-encoding `window - 1` frames of context (the official default), in both samplers: the
sequential sample is then the exact solution of the equations Jacobi solves, and Jacobi's error is measured
against it. `long_video_s_per_frame` times Jacobi at 8, 16 and 32 latent frames: with a bounded window the
cost per frame should not grow with the video, and each added frame (`long_video_s_per_added_frame`) costs the same.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch

from ..flow.model import StarFlow
from ..sampling.denoise import denoiser_for, learned_denoise_video
from ..sampling.jacobi import JacobiStats
from ..sampling.options import SamplerOptions
from ..sampling.sample import sample
from .timing import first_sequential_call, interleaved, random_inputs, seconds, timed

__all__ = ["VIDEO_PARTS", "bench_video", "check_video_targets", "DENOISE_SIGMA"]

VIDEO_PARTS = ("video_sequential", "video_jacobi", "long_video")
# the learnable denoiser's update x - 0.3 pred (sigma - 0) / sigma does not depend on sigma: any level will do
DENOISE_SIGMA = 0.3


def _sampler(model: StarFlow, denoise: bool) -> Callable:
    """run(options, z, y, y_null, stats) -> (sample, denoised sample), with the model's sliding window."""
    window = model.config.local_attn_window
    use_denoiser = denoise and model.learnable_self_denoiser is not None

    def run(o: SamplerOptions, z, y, y_null, stats: JacobiStats | None = None):
        if window:
            o = o.with_(attn_window=window, context_length=o.context_length or window - 1)
        x = sample(model, z, y, y_null, o, stats=stats)
        if not use_denoiser:
            return x, x
        return x, learned_denoise_video(model, x, y, DENOISE_SIGMA, window, o.denoiser_precision)
    return run


def bench_video(model: StarFlow, opt, device: torch.device, res: dict[str, Any], log) -> None:
    """Measure the video parts of `opt` (a BenchOptions) on `model`, adding the figures to `res`."""
    c = model.config
    res["video_frames"], res["video_batch"] = opt.video_frames, opt.video_batch
    res["video_window"] = c.local_attn_window
    res["video_denoiser"] = use_denoiser = bool(opt.video_denoise and model.learnable_self_denoiser is not None)
    so = opt.video_sampling
    if use_denoiser:
        d = denoiser_for(model, so.denoiser_precision)
        res["video_denoiser_dtype"] = str(next(d.parameters()).dtype).removeprefix("torch.")
    run = _sampler(model, opt.video_denoise)
    dtype = next(model.parameters()).dtype
    z, y, y_null = random_inputs(model, opt.video_batch, opt.seed + 2, device, dtype, frames=opt.video_frames)
    parts = set(opt.parts or VIDEO_PARTS)
    seq = None
    if "video_sequential" in parts:
        seq = _sequential(run, opt, so, device, (z, y, y_null), res, log)
    elif "video_jacobi" in parts:
        seq = run(so.with_(method="sequential"), z, y, y_null)[0]
    if "video_jacobi" in parts:
        # the exact sample denoised in the model's own precision: what a Jacobi sample denoised as configured
        # (a bf16 denoiser too: SamplerOptions.denoiser_precision) is measured against
        seq_denoised = learned_denoise_video(model, seq, y, DENOISE_SIGMA, c.local_attn_window) if use_denoiser \
            else seq
        _jacobi(run, opt, so, device, (z, y, y_null), (seq, seq_denoised), res, log)
        if "video_sequential_s" in res:
            res["video_jacobi_over_sequential"] = round(res["video_jacobi_s"] / res["video_sequential_s"], 3)
    if "long_video" in parts:
        _long_video(model, run, opt, so, device, dtype, res, log)


def _sequential(run, opt, so: SamplerOptions, device, inputs, res: dict, log) -> torch.Tensor:
    """Sequential video sampling, compiled steps unless told otherwise (the eager figure too when comparing)."""
    compiled = first_sequential_call(lambda o: run(o, *inputs), so, opt.sequential_compile, device, res,
                                     "video_sequential_first_s", "video_sequential_compile_error", log)
    ts, (seq, _) = timed(lambda: run(compiled, *inputs), device, max(opt.warmup - 1, 0), opt.sample_repeats)
    res["video_sequential_s"] = seconds(ts)
    res["video_sequential_s_range"] = [round(min(ts), 3), round(max(ts), 3)]
    res["video_sequential_compiled"] = compiled.compile
    log(f"video_sequential_s {res['video_sequential_s']} (first call {res['video_sequential_first_s']})")
    if compiled.compile and opt.compare_official:
        eager = compiled.with_(compile=False)
        ts, (exact, _) = timed(lambda: run(eager, *inputs), device, opt.warmup, opt.sample_repeats)
        res["video_sequential_eager_s"] = seconds(ts)
        res["video_sequential_eager_s_range"] = [round(min(ts), 3), round(max(ts), 3)]
        res["video_sequential_compiled_max_abs_diff"] = round((exact.float() - seq.float()).abs().max().item(), 7)
        seq = exact
        log(f"video_sequential_eager_s {res['video_sequential_eager_s']}")
    return seq


def _jacobi(run, opt, so: SamplerOptions, device, inputs, exact: tuple[torch.Tensor, torch.Tensor], res: dict,
            log) -> None:
    """Jacobi as configured, then (compare_official) the official schedule on our implementation (and denoiser
    precision). exact: the sequential sample, and it denoised in the model's precision."""
    base = so.with_(method="jacobi", compile=False)
    variants = [("", base)]
    if opt.compare_official and (base.jacobi_schedule, base.jacobi_draft, base.denoiser_precision) != \
            ("official", "none", "model"):
        variants.append(("_official", base.with_(jacobi_schedule="official", jacobi_draft="none",
                                                 denoiser_precision="model")))
    seq, seq_denoised = exact
    for key, o in variants:
        ts, (x, xd) = timed(lambda: run(o, *inputs), device, opt.warmup, opt.sample_repeats)
        stats = JacobiStats()
        run(o, *inputs, stats)
        res[f"video_jacobi{key}_s"] = seconds(ts)
        res[f"video_jacobi{key}_s_range"] = [round(min(ts), 3), round(max(ts), 3)]
        for name, a, b in (("", x, seq), ("_denoised", xd, seq_denoised)):
            res[f"video_jacobi{key}{name}_max_abs_err"] = round((a.float() - b.float()).abs().max().item(), 5)
        res[f"video_jacobi{key}_trunk_calls"] = stats.iterations
        res[f"video_jacobi{key}_tokens"] = stats.tokens
        if stats.draft_iterations:
            res[f"video_jacobi{key}_draft_trunk_calls"] = stats.draft_iterations
        log(f"video_jacobi{key}_s {res[f'video_jacobi{key}_s']} ({o.jacobi_schedule}: {stats.iterations} trunk "
            f"calls, {stats.tokens} tokens, max err {res[f'video_jacobi{key}_max_abs_err']}, denoised "
            f"{res[f'video_jacobi{key}_denoised_max_abs_err']})")
    res["video_jacobi_schedule"] = base.jacobi_schedule
    res["video_jacobi_window"] = base.jacobi_window


def _long_video(model: StarFlow, run, opt, so: SamplerOptions, device, dtype, res: dict, log) -> None:
    """Jacobi (as configured) at each length of opt.long_video_frames, per latent frame. The lengths take turns
    (timing.interleaved): the flatness is a ratio of them, which a drifting host would otherwise move."""
    o = so.with_(method="jacobi", compile=False)
    inputs = {T: random_inputs(model, opt.video_batch, opt.seed + 2, device, dtype, frames=T)
              for T in opt.long_video_frames}
    times = interleaved({T: (lambda T=T: run(o, *inputs[T])) for T in inputs}, device, opt.warmup, opt.sample_repeats)
    per_frame = {str(T): round(statistics.median(ts) / T, 4) for T, ts in times.items()}
    for T, v in per_frame.items():
        log(f"long_video_s_per_frame[{T}] {v}")
    res["long_video_s_per_frame"] = per_frame
    if per_frame:
        v = list(per_frame.values())
        res["long_video_flatness"] = round(max(v) / min(v), 3)
    # what each frame added between consecutive lengths: linear time makes these equal, while the cost per frame
    # also carries the first window's (its frames solved together, one denoiser pass for all of them) and so
    # rises towards it from below as the video grows
    lengths = sorted(times)
    added = {f"{a}-{b}": round((statistics.median(times[b]) - statistics.median(times[a])) / (b - a), 4)
             for a, b in zip(lengths, lengths[1:])}
    if added:
        res["long_video_s_per_added_frame"] = added
        log(f"long_video_s_per_added_frame {added}")


def check_video_targets(res: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """The speed issue's video targets: Jacobi <= 0.15x our own sequential, <= 0.5x the official Jacobi at no
    larger error (when a reference measured by official_baseline.py is given), and a flat cost per frame
    (max / min within 20%) as long videos grow."""
    out: dict[str, Any] = {}
    if "video_jacobi_over_sequential" in res:
        out["video_jacobi_over_sequential"] = res["video_jacobi_over_sequential"]
        out["video_jacobi_over_sequential_ok"] = res["video_jacobi_over_sequential"] <= 0.15
    ref = reference or {}
    if "video_jacobi_s" in res and "video_jacobi_s" in ref:
        r = round(res["video_jacobi_s"] / float(ref["video_jacobi_s"]), 3)
        out["video_jacobi_s_vs_official"] = r
        out["video_jacobi_s_ok"] = r <= 0.5
        if "video_jacobi_max_abs_err" in ref:
            # ours after denoising too (its denoiser may predict in bf16: SamplerOptions.denoiser_precision)
            err = max(res["video_jacobi_max_abs_err"], res.get("video_jacobi_denoised_max_abs_err", 0.0))
            out["video_jacobi_max_abs_err_ok"] = err <= float(ref["video_jacobi_max_abs_err"])
    if "long_video_flatness" in res:
        out["long_video_flatness"] = res["long_video_flatness"]
        out["long_video_flat_ok"] = res["long_video_flatness"] <= 1.2
    if "long_video_s_per_frame" in res and isinstance(ref.get("long_video_s_per_frame"), dict):
        out["long_video_vs_official"] = {k: round(v / float(ref["long_video_s_per_frame"][k]), 3)
                                         for k, v in res["long_video_s_per_frame"].items()
                                         if k in ref["long_video_s_per_frame"]}
    out["all_ok"] = all(v for k, v in out.items() if k.endswith("_ok"))
    return out
