"""`starflow train --config FILE.yaml [section.key=value ...]` and `starflow bench-train`.

Under torchrun every process runs the same command:
    torchrun --nproc_per_node 2 -m starflow.cli.main train --config configs/digits_class_cond.yaml dist.strategy=fsdp
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_BENCH_CONFIG = "digits_class_cond.yaml"
BENCH_SECONDS = 600.0


def configs_dir() -> Path:
    """The repository's configs/ folder (source checkout), else ./configs."""
    here = Path(__file__).resolve().parents[3] / "configs"
    return here if here.is_dir() else Path.cwd() / "configs"


def register(sub) -> None:
    p = sub.add_parser("train", help="train a STARFlow model from a YAML config")
    p.add_argument("--config", type=Path, required=True, help="training YAML (model/data/optim/log/dist sections)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 log.out_dir=runs/x")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in log.out_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a log.out_dir that holds an earlier run (its checkpoints, metrics, samples "
                        "and final/ are removed); without it, such a folder is an error")
    p.add_argument("--out", type=Path, default=None, help="output folder (same as log.out_dir=...)")
    p.set_defaults(func=run_train)

    b = sub.add_parser("bench-train", help="train the default class-conditional digits model for a fixed wall time "
                                           "and print held-out bits/dim as JSON")
    b.add_argument("--config", type=Path, default=None, help=f"default: configs/{DEFAULT_BENCH_CONFIG}")
    b.add_argument("--seconds", type=float, default=BENCH_SECONDS, help="training wall time (default 600)")
    b.add_argument("--out", type=Path, default=Path("runs/bench-train"), help="output folder, replaced (default "
                                                                              "runs/bench-train)")
    b.add_argument("overrides", nargs="*", help="dotted overrides")
    b.set_defaults(func=run_bench)


def _overrides(args) -> list[str]:
    extra = list(args.overrides or [])
    if args.out is not None:
        extra.append(f"log.out_dir={args.out}")
    return extra


def run_train(args) -> int:
    from ..training import load_train_config, train

    extra = _overrides(args)
    if args.resume:
        extra.append("resume=true")
    if args.overwrite:
        extra.append("overwrite=true")
    result = train(load_train_config(args.config, extra))
    if result.model is not None:  # rank 0
        print(json.dumps({"steps": result.steps, "test_bpd": result.test_bpd, "seconds": round(result.seconds, 1),
                          "skipped_steps": result.skipped_steps, "model_dir": str(result.checkpoint_dir)}))
    sys.stdout.flush()
    return 0


def run_bench(args) -> int:
    from ..training import load_train_config, train

    path = args.config or configs_dir() / DEFAULT_BENCH_CONFIG
    extra = [f"optim.max_seconds={args.seconds}", "optim.max_steps=null", "resume=false", "overwrite=true"] + \
        _overrides(args)
    cfg = load_train_config(path, extra)
    result = train(cfg)
    if result.model is not None:
        print(json.dumps({"test_bpd": round(result.test_bpd, 4) if result.test_bpd is not None else None,
                          "steps": result.steps, "seconds": round(result.seconds, 1),
                          "skipped_steps": result.skipped_steps, "config": str(path)}))
    sys.stdout.flush()
    return 0
