"""`starflow bench --model FILE.pt [--json]`: speed of the likelihood pass, training step and samplers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..sampling.options import DENOISER_PRECISIONS, DRAFT_TH_FACTOR, WINDOW_ROWS, WINDOW_WIDTH


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure forward / training / sampling speed on a conformance-format model")
    p.add_argument("--model", type=Path, required=True, help="model file: official config + state dict (.pt)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 changes the numerics; fp32 is exact (on CUDA, fp32 runs add bf16 figures)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of forward / train step")
    p.add_argument("--sample-repeats", type=int, default=3, help="timed runs of each sampler")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jacobi-schedule", choices=["sliding", "official"], default="sliding",
                   help="Jacobi schedule timed as sample_jacobi_s (default sliding; official is timed too)")
    p.add_argument("--jacobi-draft", choices=["auto", "bf16", "none"], default="auto",
                   help="bf16: each block is first solved in bfloat16 and every token is then accepted by the "
                        "float32 rule; auto (default): bf16 where the hardware has native bf16 (AMX, CUDA); none")
    p.add_argument("--jacobi-window", type=int, default=0,
                   help=f"sliding schedule: its window in tokens (default 0: about {WINDOW_ROWS} rows, tokens x "
                        f"sequences, at {WINDOW_WIDTH} channels, fewer for wider models; at least the block size)")
    p.add_argument("--jacobi-draft-block-size", type=int, default=0,
                   help="window of the draft's Jacobi solve (default 0: the whole sequence)")
    p.add_argument("--jacobi-draft-th", type=float, default=None,
                   help=f"threshold that stops the draft's Jacobi solve (default: {DRAFT_TH_FACTOR:g}x the "
                        "sampler's 1e-3)")
    p.add_argument("--denoiser-precision", choices=list(DENOISER_PRECISIONS), default="auto",
                   help="video models: the learnable denoiser after sampling predicts in bf16 (a kept copy; the update "
                        "stays float32) or in the model's precision; auto (default): bf16 where bf16 is native")
    p.add_argument("--train-autocast", choices=["auto", "bf16", "none"], default="auto",
                   help="float32 runs: also time the training step under bf16 autocast (float32 weights, the "
                        "official training precision) as train_step_autocast_ms; auto (default): where bf16 is "
                        "native (AMX, AVX-512 BF16, CUDA)")
    p.add_argument("--no-official", action="store_true",
                   help="do not also time the baselines (official Jacobi, Jacobi without draft, eager sequential)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer layers for the forward pass and the training step")
    p.add_argument("--eager-sequential", action="store_true",
                   help="time sequential sampling in eager mode only (default: compiled one-token steps)")
    p.add_argument("--reference", type=Path, default=None,
                   help="JSON of official figures measured just before on this machine "
                        "(benchmarks/official_baseline.py); default: the speed issue's figures")
    p.add_argument("--parts", default=None,
                   help="comma-separated subset of forward,train,sequential,jacobi (image models) or "
                        "video_sequential,video_jacobi,long_video (video models); default: all of the model's kind")
    p.add_argument("--video-frames", type=int, default=8, help="video models: latent frames of the video figures")
    p.add_argument("--long-video-frames", default="8,16,32",
                   help="video models: comma-separated latent frame counts of long_video_s_per_frame")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.bench import BenchOptions, bench

    reference = None
    if args.reference is not None:
        try:
            reference = json.loads(args.reference.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--reference {args.reference}: not a readable JSON file ({e})") from None
        if not isinstance(reference, dict):
            raise ValueError(f"--reference {args.reference}: expected a JSON object of figures")
    jacobi = dict(jacobi_schedule=args.jacobi_schedule, jacobi_draft=args.jacobi_draft,
                  jacobi_window=args.jacobi_window, jacobi_draft_block_size=args.jacobi_draft_block_size,
                  jacobi_draft_th=args.jacobi_draft_th)
    sampling = BenchOptions().sampling.with_(**jacobi)
    video_sampling = BenchOptions().video_sampling.with_(**jacobi, denoiser_precision=args.denoiser_precision)
    try:
        long_video = tuple(int(t) for t in args.long_video_frames.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--long-video-frames: comma-separated integers, not {args.long_video_frames!r}") from None
    from .checks import check_device
    opt = BenchOptions(device=check_device(args.device) if args.device else "cpu", dtype=args.dtype, threads=args.threads, repeats=args.repeats,
                       sample_repeats=args.sample_repeats, warmup=args.warmup, seed=args.seed, compile=args.compile,
                       sampling=sampling, compare_official=not args.no_official, train_autocast=args.train_autocast,
                       sequential_compile=not args.eager_sequential, reference=reference,
                       video_sampling=video_sampling, video_frames=args.video_frames, long_video_frames=long_video,
                       parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()) if args.parts else None)
    log = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    res = bench(args.model, opt, log)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            if k != "options":
                print(f"{k:>24}: {v}")
    return 0
