"""Pack the two bench models into one bf16 safetensors file for a machine the shared folder does not reach.

The device machine receives at most 64 MiB with a call; the bench models are 39 MB (bench_t2i_small.pt) and
64 MB (bench_t2v_small.pt) in float32. Stored in bf16 they take half that:

    python benchmarks/pack_bench_models.py pack [--src ../shared/bench] [--out .cache/bench_models_bf16]
        -> .cache/bench_models_bf16.safetensors (tensors named "<name>/<official key>") and
           .cache/bench_models_bf16.json ({name: {"config": ..., "format": ..., "description": ...}})
    python benchmarks/pack_bench_models.py unpack [--packed .cache/bench_models_bf16] [--dest .cache]
        -> .cache/bench_t2i_small.pt, .cache/bench_t2v_small.pt: float32 files in the conformance format
           (a dict with the official `config` and `state_dict`), what `load_bench_model` and
           benchmarks/official_baseline.py read

The unpacked weights are the originals rounded to bf16 (about 3 significant digits), so figures measured on
them are timings of the same shapes and code paths, not of the exact shared weights; the conformance `cases`
(reference vectors) are left out. Only torch and safetensors are needed (both are on the device image).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

NAMES = ("bench_t2i_small", "bench_t2v_small")
_META = ("format", "name", "description")


def pack(src: Path, out: Path, files: dict[str, Path] | None = None) -> tuple[Path, Path]:
    """Pack src/<name>.pt for each of NAMES (or `files`: {name: path}, e.g. tiny models for a smoke run)."""
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    for name, path in (files or {n: src / f"{n}.pt" for n in NAMES}).items():
        if not path.is_file():
            raise SystemExit(f"{path}: not found (the bench models live in ../shared/bench/)")
        data = torch.load(path, map_location="cpu", weights_only=True)
        index[name] = {"config": data["config"], **{k: data[k] for k in _META if k in data},
                       "dtypes": {}}
        for key, t in data["state_dict"].items():
            # floating weights in bf16; anything else (none in the bench models today) as it is
            packed = t.to(torch.bfloat16) if t.is_floating_point() else t
            if packed.dtype != t.dtype:
                index[name]["dtypes"][key] = str(t.dtype).removeprefix("torch.")
            tensors[f"{name}/{key}"] = packed.contiguous().clone()   # clone: no shared storage for safetensors
    out.parent.mkdir(parents=True, exist_ok=True)
    st, js = out.with_suffix(".safetensors"), out.with_suffix(".json")
    save_file(tensors, str(st))
    js.write_text(json.dumps(index, indent=1))
    return st, js


def unpack(packed: Path, dest: Path) -> list[Path]:
    st, js = packed.with_suffix(".safetensors"), packed.with_suffix(".json")
    for p in (st, js):
        if not p.is_file():
            raise SystemExit(f"{p}: not found (make it with `python benchmarks/pack_bench_models.py pack`)")
    index = json.loads(js.read_text())
    tensors = load_file(str(st))
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, meta in index.items():
        prefix = f"{name}/"
        sd = {k[len(prefix):]: v.to(getattr(torch, meta["dtypes"][k[len(prefix):]]))
              if k[len(prefix):] in meta["dtypes"] else v
              for k, v in tensors.items() if k.startswith(prefix)}
        data = {k: meta[k] for k in _META if k in meta}
        data["description"] = (data.get("description", "") + " [weights rounded to bf16 by "
                               "benchmarks/pack_bench_models.py]").strip()
        data.update(config=meta["config"], state_dict=sd)
        path = dest / f"{name}.pt"
        torch.save(data, path)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--src", type=Path, default=Path("../shared/bench"))
    p.add_argument("--out", type=Path, default=Path(".cache/bench_models_bf16"))
    p.add_argument("--t2i", type=Path, help="pack this file as bench_t2i_small (default: SRC/bench_t2i_small.pt)")
    p.add_argument("--t2v", type=Path, help="pack this file as bench_t2v_small (default: SRC/bench_t2v_small.pt)")
    u = sub.add_parser("unpack")
    u.add_argument("--packed", type=Path, default=Path(".cache/bench_models_bf16"))
    u.add_argument("--dest", type=Path, default=Path(".cache"))
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        files = {n: getattr(args, n[6:9]) or args.src / f"{n}.pt" for n in NAMES}
        for path in pack(args.src, args.out, files):
            print(f"{path} {path.stat().st_size / 2 ** 20:.1f} MiB")
    else:
        for path in unpack(args.packed, args.dest):
            print(f"{path} {path.stat().st_size / 2 ** 20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
