"""`starflow` command line. Each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# module -> the commands it registers
COMMAND_MODULES = [
    "starflow.cli.conformance",   # conformance
    "starflow.cli.bench",         # bench
    "starflow.cli.train",         # train, bench-train
    "starflow.cli.autoencoder",   # train-autoencoder, finetune-decoder
    "starflow.cli.generate",      # generate, generate-video, convert
    "starflow.cli.edit",          # inpaint, edit
    "starflow.cli.evaluate_video",  # evaluate-video
    "starflow.cli.demo",          # demo
    "starflow.cli.evaluate",      # evaluate
    "starflow.cli.serve",         # serve
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starflow", description="Transformer autoregressive normalizing flows.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not built in this version
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"starflow {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
