"""`starflow evaluate-video`: score a moving-digits video model with the frame-by-frame digit reader."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("evaluate-video", help="score a moving-digits video model: prompted digit and direction, "
                                              "consistency, image-to-video, long videos, video-to-video",
                       description="Reads every frame of the model's videos on its own (locates the 8x8 digit, "
                                   "classifies it, tracks it) and scores them against their prompts; the same "
                                   "reader on held-out real videos gives its ceiling.")
    p.add_argument("--model", type=Path, required=True,
                   help="a moving-digits model exported by `starflow train` (its final/ folder)")
    p.add_argument("--per-prompt", type=int, default=5, help="text-to-video videos per prompt, 40 prompts (default 5)")
    p.add_argument("--i2v", type=int, default=40, help="image-to-video: held-out first frames (0: skip; default 40)")
    p.add_argument("--long", type=int, default=40, help="long videos through the sliding window, every prompt once "
                                                       "for 40 (0: skip; default 40)")
    p.add_argument("--long-factor", type=int, default=4, help="long videos: times the trained frames (default 4)")
    p.add_argument("--v2v", type=int, default=40, help="video-to-video edits of held-out videos (0: skip; default 40)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight (default: the model's)")
    p.add_argument("--sampler", dest="method", choices=["jacobi", "sequential"], default=None)
    p.add_argument("--denoise", choices=["score", "learned", "none"], default=None)
    p.add_argument("--batch-size", type=int, default=None, help="videos per sampling call (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..evaluation.video_eval import evaluate_video_pipeline
    from ..pipelines import StarFlowVideoPipeline
    from ..training.checkpoint import read_train_config

    for name in ("per_prompt", "long_factor"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("i2v", "long", "v2v"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0")
    if not args.model.is_dir():
        raise FileNotFoundError(f"{args.model}: no such directory (--model takes the final/ folder `starflow train` "
                                f"writes for a moving-digits model)")
    tc = read_train_config(args.model)
    if tc is None or tc.data.dataset != "moving_digits":
        raise ValueError(f"{args.model} is not a moving-digits model exported by `starflow train` (its training "
                         f"config says canvas, speed and frames)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = StarFlowVideoPipeline.from_pretrained(args.model, device=device)
    report = evaluate_video_pipeline(pipe, tc, per_prompt=args.per_prompt, i2v_videos=args.i2v, long_videos=args.long,
                                     long_factor=args.long_factor, v2v_videos=args.v2v, seed=args.seed,
                                     batch_size=args.batch_size, progress=not args.no_progress,
                                     **{k: v for k, v in dict(guidance=args.guidance, method=args.method,
                                                              denoise=args.denoise).items() if v is not None})
    for line in report.lines():
        print(line)
    print("sampling seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
