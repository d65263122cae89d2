"""Ours and the official code timed in alternation, in one process: ratios that survive a drifting host.

`official_baseline.py` then `starflow bench --reference` measure the two a minute apart; on a shared VM the
same code moves by 20-30% within minutes (benchmarks/RESULTS.md), more than some targets' margins. Here
each round times every figure once for each implementation, back to back (the order alternating between
rounds), and the figure reported is the median over rounds of the per-round ratio ours / official, next to
each side's median time:

    python benchmarks/side_by_side.py --code PATH/TO/ml-starflow --model ../shared/bench/bench_t2i_small.pt \\
        [--rounds 5] [--parts forward,train,sequential,jacobi] > side_by_side.json

The protocol is `starflow bench`'s (same model file, seeds, batches, guidance 2.0, Jacobi threshold 1e-3,
blocks of 16, max 32 iterations; float32; our Jacobi with its default sliding schedule and no draft, our
sequential sampler with compiled steps as `starflow bench` times it). A video model gets `video_jacobi`:
8 latent frames, batch 2, the sliding window past `local_attn_window`, and each side's learnable denoiser.
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
import time
from pathlib import Path

import torch

from starflow.evaluation.bench import BenchOptions, _device_name, load_bench_model
from starflow.evaluation.bench_video import _sampler
from starflow.evaluation.timing import random_inputs
from starflow.flow.likelihood import nll, official_loss
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

        def our_step():
            official_loss(mine, xt, yt)["loss"].backward()
            o1.step()
            o1.zero_grad(set_to_none=True)

        def off_step():
            z, _, _, logdets = theirs(xt, yt)
            theirs.get_loss(z, logdets)["loss"].backward()
            o2.step()
            o2.zero_grad(set_to_none=True)
        pairs["train_step_ms"] = (our_step, off_step)
    z, y, y_null = random_inputs(ours, 4, 1, "cpu", torch.float32)
    so = BenchOptions().sampling

    def official_sample(jacobi: bool):
        with torch.no_grad():
            return official(z, torch.cat([y, y_null]), reverse=True, **base.reverse_kwargs(jacobi))
    if "sequential" in parts:
        pairs["sample_sequential_s"] = (lambda: sample(ours, z, y, y_null, so.with_(method="sequential", compile=True)),
                                        lambda: official_sample(False))
    if "jacobi" in parts:
        pairs["sample_jacobi_s"] = (lambda: sample(ours, z, y, y_null, so.with_(jacobi_draft="none")),
                                    lambda: official_sample(True))
    return pairs


def _video_pairs(ours, official, base) -> dict:
    c = ours.config
    window = c.local_attn_window
    z, y, y_null = random_inputs(ours, 2, 2, "cpu", torch.float32, frames=8)
    run = _sampler(ours, True)
    so = BenchOptions().video_sampling.with_(jacobi_draft="none")

    def off():
        kw = base.reverse_kwargs(True, window - 1 if window else None)
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):   # it prints when it re-encodes context
            x = official(z, torch.cat([y, y_null]), reverse=True, **kw)
            return base._official_denoise(official, x, y, window, c.denoiser_window)
    return {"video_jacobi_s": (lambda: run(so, z, y, y_null), off)}


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, required=True, help="checkout of apple/ml-starflow")
    ap.add_argument("--model", type=Path, required=True, help="bench model file (official config + state dict)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", default=None, help=f"image models: comma-separated subset of {','.join(IMAGE_PARTS)}")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if not (args.code / "transformer_flow.py").is_file():
        raise SystemExit(f"{args.code}: no transformer_flow.py (give a checkout of apple/ml-starflow)")
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
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
    pairs = (_video_pairs(ours, official, base) if ours.config.is_video_model
             else _image_pairs(ours, official, base, parts))
    for name, (mine, theirs) in pairs.items():
        mine(), theirs()                                        # warm-up (compiles our sequential steps)
        scale = 1000 if name.endswith("_ms") else 1
        t_ours, t_off = [], []
        for r in range(args.rounds):
            order = [(mine, t_ours), (theirs, t_off)]
            for fn, times in (order if r % 2 == 0 else order[::-1]):
                times.append(_seconds(fn) * scale)
        ratios = [a / b for a, b in zip(t_ours, t_off)]
        res[name] = {"ours": round(statistics.median(t_ours), 3), "official": round(statistics.median(t_off), 3),
                     "ratio": round(statistics.median(ratios), 3), "ratios": [round(q, 3) for q in ratios]}
        print(f"{name}: {res[name]}", file=sys.stderr)
    res["loadavg_1m_end"] = base._loadavg()
    with contextlib.suppress(Exception):
        torch.distributed.destroy_process_group()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
