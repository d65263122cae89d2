"""One image from a random model of the official 3B text-to-image shape in bf16, on this machine's CPU.

Issue 17, part 3: build the model (`MODEL_SIZES["starflow-3b-t2i-256"]`, 3.86 B parameters), write it in bf16 to a
safetensors file, load it back in a fresh process through `load_official(..., torch_dtype=torch.bfloat16)` (the
route of `starflow generate --official-config ... --dtype bf16`), and sample one 256x256 image's latents (32x32x4)
with guidance and Jacobi. Reported: peak resident memory against the weights, the time for the image, and two
floors for that time:
- memory bandwidth: every trunk call reads its block's weights once (measured read bandwidth);
- arithmetic: the token positions the trunk calls evaluated, 2 FLOPs per weight per row, at the GEMM rate of this
  CPU for the shape of the calls in the precision the products ran in (measured: bf16 where native, else float32).
On a CPU without native bf16 matrix products the layers compute in float32, one layer's weights converted at a
time (starflow.nn.precision.layers_compute_in, what `sample` does there); `--native-bf16-call` also times one
deep-block trunk call with the bf16 products as stored, for comparison.

    PYTHONPATH=src python benchmarks/big_model.py [--dir /tmp/starflow-big] [--block-size 16] [--keep]

Text embeddings and noise are random (no T5 or VAE: their cost is not the flow's). Prints one JSON object;
benchmarks/RESULTS.md records the figures. Needs ~9 GB of free memory and ~16 GB of disk (the file, 7.7 GB).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load_memory():
    """benchmarks/load_memory.py (the 3B shape, its official-style config, the writer of random weights)."""
    spec = importlib.util.spec_from_file_location("load_memory", HERE / "load_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def probe(rows: int, width: int) -> dict:
    """This CPU: read bandwidth (sum over 1 GiB), and the GEMM rate of a (rows x width) @ (width x 4 width) product
    with the weight in memory (not in cache), as the trunk's MLP has it: in float32, and in bf16 where the CPU
    multiplies bf16 natively (the model then computes as stored)."""
    import torch

    from starflow.sampling.draft import native_bf16

    a = torch.ones(2 ** 28)                             # 1 GiB, touched
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t)
    bandwidth = a.numel() * 4 / min(ts)
    del a
    out = {"read_bandwidth_gb_s": round(bandwidth / 1e9, 2), "gemm_rows": rows}
    flops = 2 * rows * width * 4 * width
    for dtype in [torch.float32] + ([torch.bfloat16] if native_bf16(torch.device("cpu")) else []):
        ws = [torch.randn(4 * width, width).to(dtype) for _ in range(4)]   # 4 x 151 MB at width 3072 (float32)
        x = torch.randn(rows, width).to(dtype)
        ts = []
        for i in range(12):
            t = time.perf_counter()
            torch.nn.functional.linear(x, ws[i % 4])
            ts.append(time.perf_counter() - t)
        name = "fp32" if dtype == torch.float32 else "bf16"
        out[f"gemm_{name}_gflop_s"] = round(flops / sorted(ts[2:])[len(ts[2:]) // 2] / 1e9, 1)
        del ws
    return out


def run_sample(path: str, block_size: int, schedule: str, guidance: float, native_call: bool, shape: str) -> dict:
    import torch

    import starflow
    from starflow.flow.io import load_official
    from starflow.nn.trunk import Trunk
    from starflow.sampling.draft import native_bf16
    from starflow.sampling.jacobi import JacobiStats
    from starflow.sampling.sample import sample

    lm = _load_memory()
    baseline = _rss()
    t = time.perf_counter()
    model = load_official(lm.official_args(shape), path, torch_dtype=torch.bfloat16)
    load_s = time.perf_counter() - t
    after_load = _rss()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    c = model.config
    block_bytes = {id(b): sum(p.numel() * p.element_size() for p in b.parameters()) for b in model.blocks}
    block_names = {id(b): f"block{i}" for i, b in enumerate(model.blocks)}
    calls: dict = collections.defaultdict(lambda: {"calls": 0, "row_tokens": 0, "seconds": 0.0})
    run = Trunk.run

    def counted(self, x, text=None, **kw):      # per block: trunk calls, rows x tokens evaluated, time
        t0 = time.perf_counter()
        out = run(self, x, text, **kw)
        n = (x.size(0) * x.size(1) if x is not None else 0) + (text.size(0) * text.size(1) if text is not None else 0)
        s = calls[block_names.get(id(self), "other")]
        s["calls"] += 1
        s["row_tokens"] += n
        s["seconds"] += time.perf_counter() - t0
        s["bytes"] = block_bytes.get(id(self), 0)
        s["params"] = s["bytes"] // 2
        return out
    Trunk.run = counted
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, c.channel_size, c.img_size, c.img_size, generator=g).bfloat16()
    y = torch.randn(1, c.txt_size, c.txt_dim, generator=g).bfloat16()
    y_null = torch.randn(1, c.txt_size, c.txt_dim, generator=g).bfloat16()
    stats = JacobiStats()
    t = time.perf_counter()
    x = sample(model, z, y, y_null, method="jacobi", guidance=guidance, jacobi_block_size=block_size, jacobi_th=1e-3,
               jacobi_max_iter=32, jacobi_schedule=schedule, stats=stats)
    image_s = time.perf_counter() - t
    Trunk.run = run
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res = {"params": sum(p.numel() for p in model.parameters()), "weights_bytes": weights,
           "baseline_rss_bytes": baseline, "after_load_rss_bytes": after_load, "peak_rss_bytes": peak,
           "peak_over_weights": round(peak / weights, 3),
           "peak_above_baseline_over_weights": round((peak - baseline) / weights, 3),
           "load_s": round(load_s, 1), "image_s": round(image_s, 1), "finite": bool(torch.isfinite(x).all()),
           "trunk_calls": stats.iterations, "tokens": stats.tokens, "per_block": dict(calls),
           "compute": "bf16 products" if native_bf16(torch.device("cpu")) else "float32 (layers_compute_in)",
           "sampler": dict(method="jacobi", schedule=schedule, block_size=block_size, threshold=1e-3, max_iter=32,
                           guidance=guidance),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "starflow": starflow.__version__}
    if native_call:   # one deep-block call of `block_size` tokens (guided: 2 rows) each way, cache at the text
        from starflow.nn.precision import layers_compute_in
        deep = model.deep
        rope = model.rope_tables(deep, c.img_size, c.img_size, 0, y)
        inp = torch.randn(2, block_size, c.token_channels).bfloat16()
        out = {}
        for name, ctx in (("float32_compute", lambda: layers_compute_in(deep)), ("native_bf16", None)):
            ts = []
            for _ in range(2):
                cache = deep.new_cache(2, c.txt_size + block_size, dtype=torch.bfloat16)
                deep.run(None, torch.cat([y, y_null]), rope=rope, cache=cache)
                t = time.perf_counter()
                with torch.no_grad(), (ctx() if ctx else contextlib.nullcontext()):
                    deep.run(inp, None, rope=rope, cache=cache)
                ts.append(time.perf_counter() - t)
            out[name] = round(min(ts), 2)
        res["deep_call_s"] = out
    return res


def floors(res: dict, probe_res: dict) -> dict:
    """The time two limits allow: reading each called block's weights once per call, and the GEMM FLOPs."""
    bw = probe_res["read_bandwidth_gb_s"] * 1e9
    # the products the sample ran: bf16 as stored where native, else float32 (layers_compute_in)
    rate = probe_res["gemm_bf16_gflop_s" if res["compute"] == "bf16 products" else "gemm_fp32_gflop_s"] * 1e9
    blocks = {k: v for k, v in res["per_block"].items() if k.startswith("block")}
    read = sum(v["calls"] * v["bytes"] for v in blocks.values()) / bw
    flops = sum(2 * v["params"] * v["row_tokens"] for v in blocks.values())
    return {"bandwidth_floor_s": round(read, 1), "arithmetic_floor_s": round(flops / rate, 1),
            "tflop": round(flops / 1e12, 2),
            "image_over_bandwidth_floor": round(res["image_s"] / read, 1),
            "image_over_arithmetic_floor": round(res["image_s"] / (flops / rate), 2)}


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/starflow-big"))
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--schedule", choices=["sliding", "official"], default="sliding")
    ap.add_argument("--guidance", type=float, default=3.6, help="the official sampling script's cfg")
    ap.add_argument("--native-bf16-call", action="store_true",
                    help="also time one deep-block call with the bf16 products as stored")
    ap.add_argument("--shape", choices=["3b", "small"], default="3b", help="small: 1/4 the width (a quick check)")
    ap.add_argument("--keep", action="store_true", help="keep the written file")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "probe":
            print(json.dumps(probe(int(args.child[1]), int(args.child[2]))))
        elif args.child[0] == "sample":
            print(json.dumps(run_sample(args.child[1], int(args.child[2]), args.child[3], float(args.child[4]),
                                        args.child[5] == "1", args.child[6])))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"shape": "starflow-3b-t2i-256" if args.shape == "3b" else "3b at 1/4 width", "dtype": "bf16", "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    try:
        # written by another process, which exits (and frees the weights) before anything is measured
        cmd = [sys.executable, str(HERE / "load_memory.py"), "--write-child", "--shape", args.shape, "--dir",
               str(args.dir), "--file-dtype", "bf16", "--formats", "safetensors"]
        files = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True
                                          ).stdout.strip().splitlines()[-1])
        report["file"] = files["safetensors"]
        width = _load_memory().shape(args.shape)["channels"]
        report["probe"] = _child(["--child", "probe", str(2 * args.block_size), str(width)])
        report["run"] = _child(["--child", "sample", files["safetensors"]["path"], str(args.block_size),
                                args.schedule, str(args.guidance), "1" if args.native_bf16_call else "0", args.shape])
        report["floors"] = floors(report["run"], report["probe"])
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
        report["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
