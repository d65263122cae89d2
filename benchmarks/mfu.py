"""Training throughput (MFU) of the official 3B deep block on one GPU.

The shape of `configs/starflow_3b_t2i_256.yaml`'s deep block: 24 layers, 3072 wide, head_dim 64,
1024 image tokens (32 x 32 latent) + 128 text tokens of width 2048. bf16 autocast over float32
weights, fused AdamW, flash attention through SDPA's causal path. Prints one JSON object.

    PYTHONPATH=src python benchmarks/mfu.py [--batch 8] [--steps 5] [--peak-tflops 989]

MFU = 6 * params * tokens / step_time / peak (the usual 6ND count; `mfu_with_attention` adds the
causal attention matmuls, 6 * layers * S^2 * D per sample for forward + backward).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from starflow import ModelConfig, StarFlow
from starflow.flow.likelihood import official_loss

DEEP_3B = dict(channel_size=4, img_size=32, patch_size=1, channels=3072, blocks=1, layers_per_block=[24],
               head_dim=64, rope=1, sos=1, txt_size=128, txt_dim=2048, cond_top_only=1, use_softplus=1,
               use_final_norm=1, soft_clip=4.0, seq_order="L2R")


def measure(batch: int, steps: int, warmup: int, peak_tflops: float, checkpointing: bool,
            shape: dict | None = None, device: str = "cuda") -> dict:
    dev = torch.device(device)
    shape = shape or DEEP_3B
    cfg = ModelConfig.from_dict(shape)
    with dev:
        model = StarFlow(cfg)
    model.train()
    for b in model.blocks:
        b.gradient_checkpointing = checkpointing
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    g = torch.Generator(device=dev).manual_seed(0)
    side, n_txt = cfg.img_size, cfg.txt_size
    x = torch.randn(batch, cfg.channel_size, side, side, device=dev, generator=g)
    y = torch.randn(batch, n_txt, cfg.txt_dim, device=dev, generator=g)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = official_loss(model, x, y)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup):
        step()
    sync()
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
        "step_s": round(dt, 4), "step_s_range": [round(min(times), 4), round(max(times), 4)],
        "tokens_per_s": round(tokens / dt), "tflops": round(flops / dt / 1e12, 1),
        "mfu": round(flops / dt / peak, 4), "mfu_with_attention": round((flops + attn) / dt / peak, 4),
        "peak_tflops": peak_tflops, "loss": float(loss), "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 1) if dev.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 4, 2], help="batch sizes to try, largest first")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per layer")
    ap.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU: checks this script only")
    args = ap.parse_args()
    if args.smoke:
        tiny = dict(DEEP_3B, channels=128, layers_per_block=[2], img_size=8, txt_size=8, txt_dim=32)
        print(json.dumps(measure(2, 2, 1, args.peak_tflops, args.checkpointing, tiny, "cpu")))
        return
    if not torch.cuda.is_available():
        raise SystemExit("mfu.py needs a CUDA device")
    for b in args.batch:   # the largest batch that fits
        oom = False
        try:
            print(json.dumps(measure(b, args.steps, args.warmup, args.peak_tflops, args.checkpointing)), flush=True)
            return
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:   # outside the except block, so the failed attempt's tensors can be freed
            gc.collect()
            torch.cuda.empty_cache()
            print(json.dumps({"batch": b, "error": "out of memory"}), flush=True)
    raise SystemExit("no batch size fit")


if __name__ == "__main__":
    main()
