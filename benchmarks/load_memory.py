"""Peak host memory while loading a checkpoint of the official 3B text-to-image shape.

A random model of the 3B shape (`MODEL_SIZES["starflow-3b-t2i-256"]`, 3.86 B parameters) is written once in
bf16 (7.7 GB) as `.safetensors` and `.pth` into --dir, then each file is loaded in a fresh process through
`load_official(<official-style config>, file, torch_dtype=...)`: the route `starflow generate
--official-config X.yaml --checkpoint Y.pth --dtype bf16` takes. The child reports its resident memory
after importing torch and starflow (`baseline`), its peak resident memory (`ru_maxrss`, which counts the
pages of memory-mapped files too) and the model's size in the chosen dtype. The files are deleted at the end
unless --keep.

    PYTHONPATH=src python benchmarks/load_memory.py [--dir /tmp/starflow-load] [--shape 3b|small] \
        [--formats safetensors pth] [--dtypes bf16] [--file-dtype bf16|fp32] [--naive] [--keep]

--shape small: the same blocks at 1/4 the width (a quick check, 0.25 B parameters). --file-dtype fp32 writes
the file in float32 (the cast path: a bf16 load of it reads twice the bytes it keeps). --naive also measures
the plain way (`torch.load` the whole file, build the model, `load_state_dict`) for comparison; at the 3B
shape that needs ~2x the model in memory.
Prints one JSON object; benchmarks/RESULTS.md records the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def shape(name: str) -> dict:
    from starflow.config import MODEL_SIZES

    d = dict(MODEL_SIZES["starflow-3b-t2i-256"])
    if name == "small":
        d.update(channels=768, txt_dim=512)
    return d


def official_args(name: str) -> dict:
    """The model as an official config gives it: img_size in pixels behind the SD-VAE, no txt_dim."""
    d = shape(name)
    d = {k: (int(v) if isinstance(v, bool) else v) for k, v in d.items() if k != "txt_dim"}
    d.update(img_size=d["img_size"] * 8, vae="stabilityai/sd-vae-ft-ema", text="google/flan-t5-xl",
             layers_per_block=" ".join(map(str, d["layers_per_block"])))
    return d


def write(name: str, folder: Path, formats: list[str], file_dtype: str = "bf16") -> dict:
    """Random weights of the shape (in `file_dtype`), one tensor at a time, into each format."""
    import torch
    from safetensors.torch import save_file

    from starflow import StarFlow
    from starflow.config import ModelConfig

    with torch.device("meta"):
        model = StarFlow(ModelConfig.from_dict(shape(name)))
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, p in model.state_dict().items():
        sd[k] = (torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.02).to(getattr(torch, DTYPES[file_dtype]))
    out = {}
    for fmt in formats:
        path = folder / f"model.{fmt}"
        t = time.perf_counter()
        if fmt == "safetensors":
            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        out[fmt] = {"path": str(path), "bytes": path.stat().st_size, "write_s": round(time.perf_counter() - t, 1)}
    return out


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(name: str, path: str, dtype: str, naive: bool) -> dict:
    """In this (fresh) process: load the file, report the memory figures."""
    import torch

    import starflow
    from starflow.flow.io import load_official

    torch_dtype = getattr(torch, DTYPES[dtype])
    baseline = _rss_bytes()
    t = time.perf_counter()
    if naive:   # the plain way: the whole state dict in memory, then a copy into a model of the dtype
        from starflow.flow.io import build_model, read_state_dict
        sd = read_state_dict(path)
        model = build_model(official_args(name), txt_dim=shape(name)["txt_dim"]).to(torch_dtype)
        model.load_state_dict(sd)
        del sd
    else:
        model = load_official(official_args(name), path, torch_dtype=torch_dtype)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: kilobytes
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert all(p.dtype == torch_dtype for p in model.parameters())
    return {"route": "naive" if naive else "load_official", "dtype": dtype, "file": path,
            "params": params, "model_bytes": model_bytes, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "peak_over_model": round(peak / model_bytes, 3),
            "peak_above_baseline_over_model": round((peak - baseline) / model_bytes, 3),
            "load_s": round(seconds, 1), "starflow": starflow.__version__, "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/starflow-load"))
    ap.add_argument("--shape", choices=["3b", "small"], default="3b")
    ap.add_argument("--formats", nargs="+", choices=["safetensors", "pth"], default=["safetensors", "pth"])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16"])
    ap.add_argument("--file-dtype", choices=list(DTYPES), default="bf16", help="dtype of the written weights")
    ap.add_argument("--naive", action="store_true", help="also measure torch.load + load_state_dict")
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    ap.add_argument("--child", nargs=4, metavar=("SHAPE", "PATH", "DTYPE", "NAIVE"), help=argparse.SUPPRESS)
    ap.add_argument("--write-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        s, path, dtype, naive = args.child
        print(json.dumps(measure(s, path, dtype, naive == "1")))
        return
    if args.write_child:
        print(json.dumps(write(args.shape, args.dir, args.formats, args.file_dtype)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    report = {"shape": args.shape, "file_dtype": args.file_dtype, "files": {}, "loads": []}
    try:
        # written by another process, which exits (and frees the weights) before any load is measured
        cmd = [sys.executable, __file__, "--write-child", "--shape", args.shape, "--dir", str(args.dir),
               "--file-dtype", args.file_dtype, "--formats", *args.formats]
        report["files"] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True
                                                    ).stdout.strip().splitlines()[-1])
        for fmt in args.formats:
            for dtype in args.dtypes:
                for naive in ([False, True] if args.naive else [False]):
                    cmd = [sys.executable, __file__, "--child", args.shape, report["files"][fmt]["path"], dtype,
                           "1" if naive else "0"]
                    run = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                    if run.returncode:
                        report["loads"].append({"format": fmt, "dtype": dtype, "naive": naive,
                                                "error": run.stderr.strip().splitlines()[-1:]})
                        continue
                    report["loads"].append({"format": fmt, **json.loads(run.stdout.strip().splitlines()[-1])})
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
