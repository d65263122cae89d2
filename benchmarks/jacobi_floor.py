"""The least a Jacobi sample can cost at full precision: each block's Jacobi solve started from its exact solution.

Why: `starflow bench` compares Jacobi with our own sequential sampler (issue 17 asks <= 0.15x for a video, the
STARFlow-V paper's ~15x). Whatever the first guess (previous frames, a bf16 draft, ...), every token of the result
is a float32 evaluation that moved by less than the threshold, so a Jacobi sample costs at least one float32
evaluation of every token in windows, the sliding window's float32 re-encoded contexts (each in its window's first
trunk call, timed with the deep block), and the denoiser after sampling (in the bench's precision: bf16 where bf16 is
native, SamplerOptions.denoiser_precision, as the Jacobi sample timed beside it). Starting each block from its own
sequential solution leaves exactly that work (the check accepts every token in its first window): its time over
the sequential sampler's bounds the ratio any first guess can reach.

    python benchmarks/jacobi_floor.py --model ../shared/bench/bench_t2v_small.pt [--rounds 5] > floor.json

Same inputs and settings as `starflow bench` (seed, batch, frames, guidance 2.0, threshold 1e-3, the model's
sliding window, its learnable denoiser); the sequential sampler with compiled steps, as the bench times it. Rounds
alternate the three figures; medians are reported, with the ratios of each round's figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from starflow.evaluation.bench import BenchOptions, _device_name, load_bench_model
from starflow.evaluation.bench_video import DENOISE_SIGMA, _sampler
from starflow.evaluation.timing import random_inputs
from starflow.nn.packed import packed_linears
from starflow.sampling.denoise import learned_denoise_video
from starflow.sampling.inverse import BlockInverse
from starflow.sampling.jacobi import JacobiStats, block_tokens, jacobi_inverse
from starflow.sampling.sequential import sequential_inverse


def _exact_blocks(model, z, y, y_null, opt) -> list[torch.Tensor]:
    """Each block's x_full after an exact (sequential) solve, in the order the sampler inverts the blocks."""
    views, tokens, window = _views(model, z, y, y_null, opt)
    exact = []
    with torch.no_grad():
        for v in views:
            with packed_linears(v.block):
                inv = BlockInverse(v, v.to_block(tokens), None, window if v.deep else None)
                out = sequential_inverse(inv, context_frames=opt.context_length, window_frames=window if v.deep else None)
            exact.append(inv.x_full.clone())
            tokens = v.from_block(out)
    return exact


def _views(model, z, y, y_null, opt):
    """The blocks in the order sampling.sample inverts them (identity blocks left out), the noise as tokens, and the
    deep block's attention window: the same loop as sample's, so that each block's exact solution can be put in."""
    window = opt.attn_window
    h = model.patchify(z)
    tokens = h.reshape(h.size(0), -1, h.size(-1))
    views = [v for v in reversed(model.block_views(h.shape, y, opt.guidance, y_null=y_null, sampling=True))
             if not v.identity]
    return views, tokens, window


def _floor(model, z, y, y_null, opt, exact, parts: dict, stats: JacobiStats | None = None) -> float:
    """One Jacobi sample whose every block starts at its exact solution, then the learnable denoiser; adds the
    time of each part to `parts` (and the float32 trunk calls to `stats`)."""
    views, tokens, window = _views(model, z, y, y_null, opt)
    t0 = time.perf_counter()
    with torch.no_grad():
        for v, x_full in zip(views, exact):
            t = time.perf_counter()
            with packed_linears(v.block):
                inv = BlockInverse(v, v.to_block(tokens), None, window if v.deep else None)
                inv.x_full.copy_(x_full)
                inv.initialised = True
                out = jacobi_inverse(inv, block_tokens(opt, inv), opt.jacobi_th,
                                     opt.jacobi_max_iter,
                                     opt.context_length, window if v.deep else None, schedule=opt.jacobi_schedule,
                                     stats=stats)
            tokens = v.from_block(out)
            parts["deep" if v.deep else "shallow"] = parts.get("deep" if v.deep else "shallow", 0.0) + \
                time.perf_counter() - t
    x = model.unpatchify(tokens.reshape(model.patchify(z).shape))
    t = time.perf_counter()
    if model.learnable_self_denoiser is not None:
        learned_denoise_video(model, x, y, DENOISE_SIGMA, window, opt.denoiser_precision)   # as the bench's
    parts["denoiser"] = parts.get("denoiser", 0.0) + time.perf_counter() - t
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="bench video model file (official config + state dict)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=BenchOptions().video_frames, help="latent frames")
    ap.add_argument("--eager-sequential", action="store_true", help="the sequential sampler without compiled steps")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.frames < 1:
        raise SystemExit("--rounds and --frames must be >= 1")
    model = load_bench_model(args.model).eval()
    if model.config.temporal_causal == 0:
        raise SystemExit("jacobi_floor.py measures video models (temporal_causal); this one is an image model")
    b = BenchOptions()
    window = model.config.local_attn_window
    opt = b.video_sampling.with_(method="jacobi")
    if window:
        opt = opt.with_(attn_window=window, context_length=opt.context_length or window - 1)
    z, y, y_null = random_inputs(model, b.video_batch, b.seed + 2, "cpu", torch.float32, frames=args.frames)
    run = _sampler(model, True)
    seq_opt = opt.with_(method="sequential", compile=not args.eager_sequential)
    exact = _exact_blocks(model, z, y, y_null, opt)
    stats, floor_stats = JacobiStats(), JacobiStats()
    run(seq_opt, z, y, y_null)                      # compiles the sequential steps
    run(opt, z, y, y_null, stats)
    _floor(model, z, y, y_null, opt, exact, {}, floor_stats)
    times: dict[str, list[float]] = {"sequential": [], "jacobi": [], "floor": []}
    parts: dict[str, float] = {}
    for r in range(args.rounds):
        order = ["sequential", "jacobi", "floor"] if r % 2 == 0 else ["floor", "jacobi", "sequential"]
        for name in order:
            t = time.perf_counter()
            if name == "floor":
                _floor(model, z, y, y_null, opt, exact, parts)
            else:
                run(seq_opt if name == "sequential" else opt, z, y, y_null)
            times[name].append(time.perf_counter() - t)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    ratio = lambda a, b: round(statistics.median(x / y for x, y in zip(times[a], times[b])), 3)  # noqa: E731
    print(json.dumps({
        "device": _device_name(torch.device("cpu")), "threads": torch.get_num_threads(), "rounds": args.rounds,
        "video_frames": args.frames, "video_batch": b.video_batch, "jacobi_draft": opt.jacobi_draft,
        "denoiser_precision": opt.denoiser_precision,
        "sequential_compiled": not args.eager_sequential,
        "video_sequential_s": med["sequential"], "video_jacobi_s": med["jacobi"], "video_jacobi_floor_s": med["floor"],
        "floor_parts_s": {k: round(v / args.rounds, 3) for k, v in parts.items()},
        "jacobi_float32_calls": stats.iterations, "jacobi_float32_tokens": stats.tokens,
        "jacobi_draft_calls": stats.draft_iterations, "floor_float32_calls": floor_stats.iterations,
        "floor_float32_tokens": floor_stats.tokens,
        "jacobi_over_sequential": ratio("jacobi", "sequential"), "floor_over_sequential": ratio("floor", "sequential"),
        "jacobi_over_floor": ratio("jacobi", "floor"),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
