"""Training throughput (MFU) of the official 3B deep block on one GPU.

The shape of `configs/starflow_3b_t2i_256.yaml`'s deep block: 24 layers, 3072 wide, head_dim 64,
1024 image tokens (32 x 32 latent) + 128 text tokens of width 2048. bf16 autocast over float32
weights, fused AdamW, flash attention through SDPA's causal path. Prints one JSON object.

    PYTHONPATH=src python benchmarks/mfu.py [--batch 8] [--steps 5] [--peak-tflops 989]
        [--compile] [--sdpa cudnn] [--tf32]
    PYTHONPATH=src python benchmarks/mfu.py --try base,cudnn,b16,b16_compile --budget-s 150

MFU = 6 * params * tokens / step_time / peak (the usual 6ND count; `mfu_with_attention` adds the
causal attention matmuls, 6 * layers * S^2 * D per sample for forward + backward). The options change how
the same step is computed, never what is counted: `--compile` compiles each transformer layer (one graph
serves all 24, forward and backward; the first warm-up step compiles), `--sdpa` picks SDPA's kernel for the
causal attention (flash, cudnn, efficient, math; default: PyTorch's choice), `--tf32` lets the float32
matmuls that autocast leaves (none in the layers; the optimiser is elementwise) use TF32. `--try` measures
the named variants (VARIANTS) in order, one JSON line each, starting no new one after `--budget-s` seconds,
and ends with a line naming the best.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from starflow import ModelConfig, StarFlow
from starflow.flow.likelihood import official_loss

DEEP_3B = dict(channel_size=4, img_size=32, patch_size=1, channels=3072, blocks=1, layers_per_block=[24],
               head_dim=64, rope=1, sos=1, txt_size=128, txt_dim=2048, cond_top_only=1, use_softplus=1,
               use_final_norm=1, soft_clip=4.0, seq_order="L2R")


SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
# --try: each variant's options (batch first: the same model, more tokens per step)
VARIANTS = {
    "base": dict(batch=8),                                    # the 46.2 % of 2026-11-26
    "cudnn": dict(batch=8, sdpa="cudnn"),
    "b16": dict(batch=16),
    "b16_cudnn": dict(batch=16, sdpa="cudnn"),
    "b16_compile": dict(batch=16, compile=True),
    "b16_compile_cudnn": dict(batch=16, compile=True, sdpa="cudnn"),
    "b8_compile": dict(batch=8, compile=True),
    "b16_tf32": dict(batch=16, tf32=True),
}


def measure(batch: int, steps: int, warmup: int, peak_tflops: float, checkpointing: bool,
            shape: dict | None = None, device: str = "cuda", compile: bool = False, sdpa: str | None = None,
            tf32: bool = False) -> dict:
    dev = torch.device(device)
    shape = shape or DEEP_3B
    cfg = ModelConfig.from_dict(shape, official=True)   # DEEP_3B: the official config keys and 0/1 flags
    torch.set_float32_matmul_precision("high" if tf32 else "highest")   # "high": TF32 matmuls
    with dev:
        model = StarFlow(cfg)
    model.train()
    for b in model.blocks:
        b.gradient_checkpointing = checkpointing
        if compile:
            for layer in b.attn_blocks:
                layer.compile(dynamic=False)
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    g = torch.Generator(device=dev).manual_seed(0)
    side, n_txt = cfg.img_size, cfg.txt_size
    x = torch.randn(batch, cfg.channel_size, side, side, device=dev, generator=g)
    y = torch.randn(batch, n_txt, cfg.txt_dim, device=dev, generator=g)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    kernel = (lambda: sdpa_kernel([SDPA[sdpa]])) if sdpa else contextlib.nullcontext

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16), kernel():
            loss = official_loss(model, x, y)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    S, L, D = (side // cfg.patch_size) ** 2 + n_txt, cfg.layers_per_block[-1], cfg.channels
    tokens = batch * S
    flops = 6 * params * tokens
    attn = 6 * L * S * S * D * batch          # causal: half of the 12 L S^2 D of full attention
    peak = peak_tflops * 1e12
    return {
        "shape": f"deep block: {L} x {D}, {S - n_txt} image + {n_txt} text tokens", "params_b": round(params / 1e9, 3),
        "batch": batch, "tokens_per_step": tokens, "gradient_checkpointing": checkpointing,
        "compile": compile, "sdpa": sdpa or "default", "tf32": tf32, "warmup_s": round(warmup_s, 1),
        "step_s": round(dt, 4), "step_s_range": [round(min(times), 4), round(max(times), 4)],
        "tokens_per_s": round(tokens / dt), "tflops": round(flops / dt / 1e12, 1),
        "mfu": round(flops / dt / peak, 4), "mfu_with_attention": round((flops + attn) / dt / peak, 4),
        "peak_tflops": peak_tflops, "loss": float(loss), "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 1) if dev.type == "cuda" else None,
    }


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _variants(names: list[str], args, shape: dict | None, device: str) -> None:
    """Each named variant in order, one JSON line each; none started after args.budget_s; then the best."""
    t0, best = time.perf_counter(), None
    for name in names:
        opts = dict(VARIANTS[name])
        if device == "cpu":
            if opts.get("sdpa") in ("cudnn", "efficient"):     # CUDA-only kernels
                print(json.dumps({"variant": name, "skipped": "CUDA-only SDPA kernel"}), flush=True)
                continue
            opts["batch"] = max(1, opts["batch"] // 4)
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            print(json.dumps({"variant": name, "skipped": f"budget of {args.budget_s} s spent"}), flush=True)
            continue
        torch._dynamo.reset()          # a compiled variant pays (and reports) its own compilation
        _free()
        try:
            res = {"variant": name, **measure(opts.pop("batch"), args.steps, args.warmup, args.peak_tflops,
                                              args.checkpointing, shape, device, **opts)}
        except torch.cuda.OutOfMemoryError:
            res = {"variant": name, **VARIANTS[name], "error": "out of memory"}
        except Exception as e:       # e.g. no cuDNN attention kernel for this shape: the next variant runs
            res = {"variant": name, **VARIANTS[name], "error": f"{type(e).__name__}: {e}"[:300]}
        _free()
        print(json.dumps(res), flush=True)
        if "mfu" in res and (best is None or res["mfu"] > best["mfu"]):
            best = res
    print(json.dumps({"best": best and {k: best[k] for k in ("variant", "batch", "compile", "sdpa", "tf32",
                                                             "step_s", "tflops", "mfu", "mfu_with_attention")},
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 4, 2], help="batch sizes to try, largest first")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per layer")
    ap.add_argument("--compile", action="store_true", help="torch.compile each transformer layer")
    ap.add_argument("--sdpa", choices=sorted(SDPA), default=None, help="SDPA kernel (default: PyTorch's choice)")
    ap.add_argument("--tf32", action="store_true", help="TF32 for float32 matmuls")
    ap.add_argument("--try", dest="variants", default=None,
                    help=f"comma-separated variants, measured in order: {', '.join(VARIANTS)}")
    ap.add_argument("--budget-s", type=float, default=150.0, help="--try: start no variant after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU: checks this script only")
    args = ap.parse_args()
    names = [v for v in (args.variants or "").split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.smoke:
        tiny = dict(DEEP_3B, channels=128, layers_per_block=[2], img_size=8, txt_size=8, txt_dim=32)
        if names:
            _variants(names, args, tiny, "cpu")
        else:
            print(json.dumps(measure(2, 2, 1, args.peak_tflops, args.checkpointing, tiny, "cpu", args.compile,
                                     args.sdpa, args.tf32)))
        return
    if not torch.cuda.is_available():
        raise SystemExit("mfu.py needs a CUDA device")
    if names:
        _variants(names, args, None, "cuda")
        return
    for b in args.batch:   # the largest batch that fits
        oom = False
        try:
            print(json.dumps(measure(b, args.steps, args.warmup, args.peak_tflops, args.checkpointing,
                                     compile=args.compile, sdpa=args.sdpa, tf32=args.tf32)), flush=True)
            return
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:   # outside the except block, so the failed attempt's tensors can be freed
            _free()
            print(json.dumps({"batch": b, "error": "out of memory"}), flush=True)
    raise SystemExit("no batch size fit")


if __name__ == "__main__":
    main()
