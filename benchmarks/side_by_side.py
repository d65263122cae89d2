"""Ours and the official code timed in alternation, in one process: ratios that survive a drifting host.

`official_baseline.py` then `starflow bench --reference` measure the two a minute apart; on a shared VM the
same code moves by 20-30% within minutes (benchmarks/RESULTS.md), more than some targets' margins. Here
each round times every figure once for each implementation, back to back (the order alternating between
rounds), and the figure reported is the median over rounds of the per-round ratio ours / official, next to
each side's median time:

    python benchmarks/side_by_side.py --code PATH/TO/ml-starflow --model ../shared/bench/bench_t2i_small.pt \\
        [--rounds 5] [--parts forward,train,sequential,jacobi] > side_by_side.json

The protocol is `starflow bench`'s (same model file, seeds, batches, guidance 2.0, Jacobi threshold 1e-3,
blocks of 16, max 32 iterations; float32, and the training step under bf16 autocast too where bf16 is native;
our Jacobi with its default sliding schedule and no draft (and with the bf16 draft where bf16 is native), our
sequential sampler both with compiled steps and eager, as `starflow bench` times it). A video model gets
`video_jacobi`: 8 latent frames, batch 2, the sliding window past `local_attn_window`, and each side's learnable
denoiser (with the bf16 draft too where bf16 is native, and its denoiser in bf16, `--denoiser-precision`:
`video_jacobi_draft_s`); and the same at 16 and 32 frames
(`--long-video-frames`), from which each side's cost per frame, its flatness (max / min over the lengths) and the time
each added frame cost come, all lengths of both sides timed in the same rounds. A Jacobi solve's time depends on its
input (how many tokens settle at once): `--video-inputs N` samples the bench's input and the next N - 1 seeds in each
timed call and reports the time per input.
The official code is imported from the checkout (nothing of it is copied here), built and loaded strictly
by official_baseline.py's functions.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch

from starflow.evaluation.bench import BenchOptions, _device_name, load_bench_model
from starflow.evaluation.bench_video import _sampler
from starflow.evaluation.timing import interleaved, random_inputs
from starflow.flow.likelihood import nll, official_loss
from starflow.sampling.draft import native_bf16
from starflow.sampling.options import DENOISER_PRECISIONS
from starflow.sampling.sample import sample

IMAGE_PARTS = ("forward", "train", "sequential", "jacobi")


def _baseline():
    spec = importlib.util.spec_from_file_location("official_baseline", Path(__file__).with_name("official_baseline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _image_pairs(ours, official, base, parts) -> dict:
    """figure -> (our callable, the official callable), on the same inputs."""
    pairs = {}
    if "forward" in parts:
        xf, yf, _ = random_inputs(ours, 8, 0, "cpu", torch.float32)   # own names: the closures outlive them

        def our_fwd():
            with torch.inference_mode():
                return nll(ours, xf, yf)

        def off_fwd():
            with torch.inference_mode():
                return official(xf, yf)[0]
        pairs["forward_ms"] = (our_fwd, off_fwd)
    if "train" in parts:
        xt, yt, _ = random_inputs(ours, 8, 0, "cpu", torch.float32)
        # copies: the steps change the weights, and the samplers below use the loaded ones
        mine, theirs = copy.deepcopy(ours).train(), copy.deepcopy(official).train()
        o1 = torch.optim.AdamW(mine.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
        p2 = [p for k, p in theirs.named_parameters() if not k.startswith("learnable_self_denoiser")]
        o2 = torch.optim.AdamW(p2, lr=1e-4, weight_decay=1e-4, fused=True)

        def steps(autocast: bool):
            def our_step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = official_loss(mine, xt, yt)["loss"]
                loss.backward()
                o1.step()
                o1.zero_grad(set_to_none=True)

            def off_step():    # as the official train.py: the forward and the loss under autocast
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    z, _, _, logdets = theirs(xt, yt)
                    loss = theirs.get_loss(z, logdets)["loss"]
                loss.backward()
                o2.step()
                o2.zero_grad(set_to_none=True)
            return our_step, off_step
        pairs["train_step_ms"] = steps(False)
        if native_bf16(torch.device("cpu")):
            # where bf16 is native a user trains under bf16 autocast (the speed issue's precision to compare at)
            pairs["train_step_autocast_ms"] = steps(True)
    z, y, y_null = random_inputs(ours, 4, 1, "cpu", torch.float32)
    so = BenchOptions().sampling

    def official_sample(jacobi: bool):
        with torch.no_grad():
            return official(z, torch.cat([y, y_null]), reverse=True, **base.reverse_kwargs(jacobi))
    if "sequential" in parts:
        # our two sequential modes: compiled one-token graphs, and eager steps with packed weights (the faster
        # of the two depends on the CPU: benchmarks/RESULTS.md)
        pairs["sample_sequential_s"] = (lambda: sample(ours, z, y, y_null, so.with_(method="sequential", compile=True)),
                                        lambda: official_sample(False))
        pairs["sample_sequential_eager_s"] = (lambda: sample(ours, z, y, y_null, so.with_(method="sequential")),
                                              lambda: official_sample(False))
    if "jacobi" in parts:
        pairs["sample_jacobi_s"] = (lambda: sample(ours, z, y, y_null, so.with_(jacobi_draft="none")),
                                    lambda: official_sample(True))
        if native_bf16(torch.device("cpu")):
            # where bf16 is native our default Jacobi starts from a bf16 draft (float32 acceptance): what a user gets
            pairs["sample_jacobi_draft_s"] = (lambda: sample(ours, z, y, y_null, so.with_(jacobi_draft="bf16")),
                                              lambda: official_sample(True))
    return pairs


def _video_pairs(ours, official, base, lengths: list[int], inputs: int = 1, denoiser: str = "auto") -> dict:
    """video_jacobi_s at 8 frames, and long_video_s[T] (the whole video) at each longer length; each call samples
    `inputs` videos (the bench's input, then the next seeds): a Jacobi solve's time depends on its input.
    denoiser: our learnable denoiser's precision in the drafted figure (the float32 ones keep the model's)."""
    c = ours.config
    window = c.local_attn_window
    run = _sampler(ours, True)
    so = BenchOptions().video_sampling.with_(jacobi_draft="none", denoiser_precision="model")
    kw = base.reverse_kwargs(True, window - 1 if window else None)

    def pair(T: int, options=so):
        data = [random_inputs(ours, 2, 2 + i, "cpu", torch.float32, frames=T) for i in range(inputs)]

        def mine():
            for z, y, y_null in data:
                run(options, z, y, y_null)

        def off():
            with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):   # it prints when it re-encodes context
                for z, y, y_null in data:
                    x = official(z, torch.cat([y, y_null]), reverse=True, **kw)
                    base._official_denoise(official, x, y, window, c.denoiser_window)
        return mine, off
    pairs = {"video_jacobi_s": pair(8), **{f"long_video_s[{T}]": pair(T) for T in lengths if T != 8}}
    if native_bf16(torch.device("cpu")):
        # our default where bf16 is native: a bf16 draft, float32 acceptance, the denoiser in bf16 (8 frames)
        pairs["video_jacobi_draft_s"] = pair(8, so.with_(jacobi_draft="bf16", denoiser_precision=denoiser))
    return pairs


def _per_frame(res: dict, lengths: list[int]) -> None:
    """Each side's long-video cost per frame (8 frames: video_jacobi_s), its flatness, max / min, and the time
    each frame added between consecutive lengths (equal in linear time: bench_video)."""
    for side in ("ours", "official"):
        total = {T: res["video_jacobi_s" if T == 8 else f"long_video_s[{T}]"][side] for T in sorted({8, *lengths})}
        per = {str(T): round(t / T, 4) for T, t in total.items()}
        res[f"long_video_s_per_frame_{side}"] = per
        res[f"long_video_flatness_{side}"] = round(max(per.values()) / min(per.values()), 3)
        Ts = list(total)
        res[f"long_video_s_per_added_frame_{side}"] = {f"{a}-{b}": round((total[b] - total[a]) / (b - a), 4)
                                                       for a, b in zip(Ts, Ts[1:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, required=True, help="checkout of apple/ml-starflow")
    ap.add_argument("--model", type=Path, required=True, help="bench model file (official config + state dict)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", default=None, help=f"image models: comma-separated subset of {','.join(IMAGE_PARTS)}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--long-video-frames", default="16,32", help="video models: the longer videos timed beside the "
                    "8-frame one (their cost per frame gives each side's long-video flatness); '' for none")
    ap.add_argument("--denoiser-precision", choices=list(DENOISER_PRECISIONS), default="auto",
                    help="video models: our learnable denoiser's precision in video_jacobi_draft_s (default auto, "
                         "the bench's: bf16 where bf16 is native; model: float32, as before the 18th session)")
    ap.add_argument("--video-inputs", type=int, default=1, help="video models: sample this many inputs in each timed "
                    "call (the bench's, then the next seeds) and report the time per input (default 1: the bench's)")
    args = ap.parse_args(argv)
    if not (args.code / "transformer_flow.py").is_file():
        raise SystemExit(f"{args.code}: no transformer_flow.py (give a checkout of apple/ml-starflow)")
    if args.rounds < 1 or args.video_inputs < 1:
        raise SystemExit("--rounds and --video-inputs must be >= 1")
    base = _baseline()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.code.resolve()))
    import transformer_flow as tf
    cfg = torch.load(args.model, map_location="cpu", weights_only=True)
    official = base.build_official(tf, cfg["config"]).float()
    official.load_state_dict(cfg["state_dict"], strict=True)
    official.eval()
    ours = load_bench_model(args.model).eval()
    res = {"model": str(args.model), "device_name": _device_name(torch.device("cpu")), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "rounds": args.rounds, "process_group": base._process_group(
               torch.device("cpu")), "loadavg_1m_start": base._loadavg()}
    parts = set(args.parts.split(",")) if args.parts else set(IMAGE_PARTS)
    video = ours.config.is_video_model
    lengths = [int(t) for t in args.long_video_frames.split(",") if t.strip()] if video else []
    inputs = args.video_inputs if video else 1
    if video:
        res["video_inputs"], res["video_draft_denoiser_precision"] = inputs, args.denoiser_precision
    pairs = (_video_pairs(ours, official, base, lengths, inputs, args.denoiser_precision) if video
             else _image_pairs(ours, official, base, parts))
    # every figure of both sides in one group of rounds: one warm-up each (it compiles our sequential steps),
    # then in turns, so that each pair is timed back to back and each side's figures at the same hour
    fns = {(name, side): fn for name, (mine, theirs) in pairs.items() for side, fn in (("ours", mine),
                                                                                         ("official", theirs))}
    times = interleaved(fns, torch.device("cpu"), 1, args.rounds)
    for name in pairs:
        scale = (1000 if name.endswith("_ms") else 1) / inputs       # per input
        t_ours, t_off = [t * scale for t in times[name, "ours"]], [t * scale for t in times[name, "official"]]
        ratios = [a / b for a, b in zip(t_ours, t_off)]
        res[name] = {"ours": round(statistics.median(t_ours), 3), "official": round(statistics.median(t_off), 3),
                     "ratio": round(statistics.median(ratios), 3), "ratios": [round(q, 3) for q in ratios]}
        print(f"{name}: {res[name]}", file=sys.stderr)
    if video:
        _per_frame(res, lengths)
    res["loadavg_1m_end"] = base._loadavg()
    with contextlib.suppress(Exception):
        torch.distributed.destroy_process_group()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
