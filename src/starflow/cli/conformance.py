"""`starflow conformance DIR`: run official conformance vectors, one row per case."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("conformance", help="check the model against official conformance vectors")
    p.add_argument("directory", type=Path, help="folder of *.pt vector files (or a single file)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.conformance import run_dir, run_file

    files = [args.directory] if args.directory.is_file() else run_dir(args.directory)
    n_pass = n_fail = 0
    print(f"{'model':<22} {'op':<13} {'case':<70} {'max err':>10} {'tol':>10}  result")
    for f in files:
        try:
            results = run_file(f)
        except Exception as e:  # noqa: BLE001 - a broken or hostile file fails alone; the other files still run
            why = " ".join(str(e).split()) or "no message"
            print(f"{f.name:<22} {'-':<13} {'':<70} {'-':>10} {'-':>10}  FAIL ({type(e).__name__}: {why[:300]})")
            n_fail += 1
            continue
        for r in results:
            print(f"{r.model:<22} {r.op:<13} {r.detail[:70]:<70} {r.max_err:>10.3g} {r.atol:>10.3g}  "
                  f"{'pass' if r.passed else 'FAIL'}")
            n_pass += r.passed
            n_fail += not r.passed
    print(f"{n_pass} passed, {n_fail} failed")
    sys.stdout.flush()
    return 0 if n_fail == 0 else 1
