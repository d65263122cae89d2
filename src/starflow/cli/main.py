"""`starflow` command line. Each command lives in its own module with `register(subparsers)`.

Exit codes: 0 done; 1 the command ran and found a failure (a conformance case, a training run whose weights
became non-finite, a process group that stopped answering); 2 the command could not do what was asked (a bad
argument or config value, a missing or unreadable file, an output that cannot be written, no space left, out
of memory). Both print one line naming the problem; `--debug` (or STARFLOW_DEBUG=1) shows the traceback
instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
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

DEBUG_HELP = "show the traceback of an error instead of one line (also STARFLOW_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starflow", description="Transformer autoregressive normalizing flows.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not built in this version
                continue
            raise
        mod.register(sub)
    for p in set(sub.choices.values()):
        # also after the command (`starflow train ... --debug`); SUPPRESS keeps a top-level --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input or machine causes (exit 2). Evaluated only when an exception reaches main."""
    import pickle

    import yaml

    errors: list[type[BaseException]] = [ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError,
                                         yaml.YAMLError]
    try:
        from safetensors import SafetensorError
        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - a dependency
        pass
    if "torch" in sys.modules:
        errors.append(sys.modules["torch"].OutOfMemoryError)
    return tuple(errors)


def _run_failures() -> tuple[type[BaseException], ...]:
    """What a run meets that is not a mistake in the command (exit 1)."""
    errors: list[type[BaseException]] = []
    if "starflow.training.trainer" in sys.modules:
        errors.append(sys.modules["starflow.training.trainer"].NonFiniteWeightsError)
    if "torch.distributed" in sys.modules and hasattr(sys.modules["torch.distributed"], "DistError"):
        errors.append(sys.modules["torch.distributed"].DistError)
    return tuple(errors)


def describe(e: BaseException) -> str:
    """One line for an expected error: its message, or what its type says when the message is empty."""
    if isinstance(e, KeyError) and e.args:
        return f"missing key {e.args[0]!r}" if not isinstance(e.args[0], str) or " " not in e.args[0] else e.args[0]
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        msg = f"{where}{e.strerror}"
        if e.errno in (28, 27, 122):   # ENOSPC, EFBIG, EDQUOT
            msg += " (free some space and run the command again; `starflow train --resume` continues a run)"
        return msg
    if type(e).__name__ == "OutOfMemoryError":
        first = str(e).splitlines()[0] if str(e) else "out of memory"
        return f"{first} (a smaller --batch-size needs less memory)"
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:     # a usage error (argparse printed it: exit 2) or --help (0): a code, not an exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False)) or os.environ.get("STARFLOW_DEBUG", "") not in ("", "0")
    from .._malloc import tune
    tune()      # freed memory kept for the next trunk call instead of page faults (starflow._malloc)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"starflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        failure = isinstance(e, _run_failures())
        if debug or not (failure or isinstance(e, _user_errors())):
            raise                       # a bug: keep its traceback
        print(f"starflow {args.command}: {'failed' if failure else 'error'}: {describe(e)}", file=sys.stderr)
        if type(e).__name__ == "ProcessGroupTimeout":
            # the process group's threads still wait on the frozen process, and releasing the run's objects
            # (this exception holds them) would wait with them, for ever: leave now, the checkpoint is on disk
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1 if failure else 2


if __name__ == "__main__":
    sys.exit(main())
