"""The official implementation's figures, measured now, on this machine, with `starflow bench`'s protocol.

CPU timings drift with the host (the same code measured 650 ms and 770 ms for a training step an hour
apart here), so a speed target against figures measured at another time is noise-limited. This
script times the official apple/ml-starflow code on the same model file and the same inputs as
`starflow bench` (same seeds, batches, guidance, Jacobi settings), so the two can run back to back:

    python benchmarks/official_baseline.py --code PATH/TO/ml-starflow --model ../shared/bench/bench_t2i_small.pt \\
        --autocast > official.json
    starflow bench --model ../shared/bench/bench_t2i_small.pt --reference official.json

PATH/TO/ml-starflow is a checkout of https://github.com/apple/ml-starflow (its `transformer_flow.py`
and `misc/` are imported from there, nothing of it is copied here). It runs on the CPU in float32.
The official `Model` is built the way its `utils/model_setup.py` builds it from the config keys, and
the state dict must load strictly. Training step: the official `Model.get_loss` on the forward
outputs, backward, fused AdamW (the same optimiser as `starflow bench`); with `--autocast` also under
bf16 autocast, for `starflow bench`'s train_step_autocast_ms. Prints one JSON object with the keys
`starflow bench --reference` reads (the official code's own prints go to stderr).

The official Jacobi sampler votes on convergence with `torch.distributed.all_reduce`, so a one-process
gloo group is started when none is (what `torchrun --nproc_per_node 1` would give it).

A video model (`bench_t2v_small.pt`) gets the video figures of `starflow bench`: `video_jacobi_s`, the
official Jacobi sampler on 8 latent frames (batch 2, guidance 2.0, threshold 1e-3, blocks of 16, its long-video
path past `local_attn_window` with `window - 1` frames of context) followed by its learnable denoiser in
windows, the loop of its `utils/inference.py` `process_denoising` (reproduced here without its `.cuda()`
calls); `video_jacobi_max_abs_err` against our sequential sample of the same windowed equations (the official
sequential sampler cannot sample past its window); and `long_video_s_per_frame` at 8, 16 and 32 frames.

On a GPU: `--device cuda` puts the model and the inputs there (the timings synchronise the device), and
`--dtype bf16` runs everything under bf16 autocast over the float32 weights, the official train.py's precision
(its sample.py autocasts to float32 on CUDA, i.e. the `--dtype fp32` figures); the training step is then the
autocast one (`train_step_ms`, as `starflow bench --dtype bf16` names it). The video error is measured against
our float32 sequential sample in both modes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from starflow.evaluation.bench import _device_name, load_bench_model
from starflow.evaluation.bench_video import DENOISE_SIGMA
from starflow.evaluation.timing import random_inputs, sync, timed as _timed_on
from starflow.sampling.sample import sample as our_sample

# keys the official training script takes from its command line when a config does not carry them
_DEFAULTS = dict(use_pretrained_lm=None, use_mm_attn=0, noise_embed_denoiser=0, gradient_checkpoint=0,
                 gradient_checkpoint_mlp=None, top_block_channels=None)


def reverse_kwargs(jacobi: bool, context_length: int | None = None) -> dict:
    """The official Model's reverse-call settings of the bench protocol: guidance 2.0; Jacobi at threshold 1e-3,
    blocks of 16, at most 32 iterations; or its sequential sampler at temperature 1 without annealing."""
    kw = dict(guidance=2.0, guide_top=None, verbose=False, return_sequence=False, jacobi=int(jacobi),
              context_length=context_length)
    kw.update(dict(jacobi_th=1e-3, jacobi_block_size=16, jacobi_max_iter=32) if jacobi else
              dict(attn_temp=1.0, annealed_guidance=False))
    return kw


def build_official(tf, cfg: dict) -> torch.nn.Module:
    """tf.Model from an official config dict (the generic branch of the official model set-up)."""
    get = (lambda k: cfg[k] if k in cfg else _DEFAULTS[k])
    lpb = cfg["layers_per_block"]
    lpb = [int(v) for v in str(lpb).split()] if isinstance(lpb, (str, int)) else list(lpb)
    return tf.Model(
        patch_size=cfg["patch_size"], channels=cfg["channels"],
        num_blocks=cfg["blocks"] if len(lpb) == 1 else len(lpb), layers_per_block=lpb, rope=cfg["rope"],
        pt_seq_len=cfg.get("pt_seq_len"), head_dim=cfg["head_dim"], num_heads=cfg.get("num_heads"),
        num_kv_heads=cfg.get("num_kv_heads"), use_swiglu=cfg.get("use_swiglu", 0), use_bias=cfg.get("use_bias", 1),
        use_qk_norm=cfg.get("use_qk_norm", 0), use_post_norm=cfg.get("use_post_norm", 0),
        norm_type=cfg.get("norm_type", "layer_norm"), in_channels=cfg["channel_size"], img_size=cfg["img_size"],
        txt_size=cfg["txt_size"], sos=cfg["sos"], cond_top_only=cfg["cond_top_only"],
        use_softplus=cfg["use_softplus"], use_pretrained_lm=get("use_pretrained_lm"), use_mm_attn=get("use_mm_attn"),
        use_final_norm=cfg["use_final_norm"], soft_clip=cfg["soft_clip"], seq_order=cfg["seq_order"],
        learnable_self_denoiser=cfg.get("learnable_self_denoiser", 0),
        conditional_denoiser=cfg.get("conditional_denoiser", 0), noise_embed_denoiser=get("noise_embed_denoiser"),
        temporal_causal=cfg.get("temporal_causal", 0), shallow_block_local=cfg.get("shallow_block_local", 0),
        denoiser_window=cfg.get("denoiser_window"), local_attn_window=cfg.get("local_attn_window"),
        top_block_channels=get("top_block_channels"), txt_dim=cfg["txt_dim"],
        use_checkpoint=get("gradient_checkpoint"), use_checkpoint_mlp=get("gradient_checkpoint_mlp"))


_DEVICE = torch.device("cpu")   # where main() put the model: timed() synchronises it


def timed(fn, warmup: int, repeats: int) -> tuple[list[float], object]:
    return _timed_on(fn, _DEVICE, warmup, repeats)


def main(argv=None) -> int:
    import torch.distributed as dist
    had_group = dist.is_available() and dist.is_initialized()
    try:
        return _main(argv)
    finally:   # the one-process group this run started goes with it: a caller (a test, a notebook) keeps none
        if not had_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, required=True, help="checkout of apple/ml-starflow")
    ap.add_argument("--model", type=Path, required=True, help="model file in the conformance format")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-repeats", type=int, default=3)
    ap.add_argument("--parts", default=None, help="image models: forward,train,sequential,jacobi; video models: "
                                                  "video_jacobi,long_video (default: all of the model's kind)")
    ap.add_argument("--video-frames", type=int, default=8)
    ap.add_argument("--long-video-frames", default="8,16,32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: model and inputs on it")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: every part under bf16 autocast (float32 weights), as the official train.py")
    ap.add_argument("--autocast", action="store_true",
                    help="also time the training step under bf16 autocast (train_step_autocast_ms): the official "
                         "train.py's autocast, which names device 'cuda' and so does nothing on a CPU, pointed "
                         "at this device")
    args = ap.parse_args(argv)
    if not (args.code / "transformer_flow.py").is_file():
        raise SystemExit(f"{args.code}: no transformer_flow.py (give a checkout of apple/ml-starflow)")
    global _DEVICE
    device = _DEVICE = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    bf16 = args.dtype == "bf16"
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.code.resolve()))
    import transformer_flow as tf

    cfg = torch.load(args.model, map_location="cpu", weights_only=True)
    model = build_official(tf, cfg["config"]).float()
    model.load_state_dict(cfg["state_dict"], strict=True)
    model.to(device)
    ours = load_bench_model(args.model).to(device)   # the bench's own inputs (and the video reference sample)
    # bf16: the official train.py's autocast, pointed at this device (on a CPU it names 'cuda' and does nothing)
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
    video = ours.config.is_video_model
    parts = set(args.parts.split(",")) if args.parts else (
        {"video_jacobi", "long_video"} if video else {"forward", "train", "sequential", "jacobi"})
    res: dict = {"impl": "official apple/ml-starflow", "code": str(args.code), "model": str(args.model),
                 "device": str(device), "device_name": _device_name(device), "dtype": args.dtype,
                 "precision": "bf16 autocast" if bf16 else "float32",
                 "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg_1m_start": _loadavg()}
    res["process_group"] = _process_group(device)
    if video:
        lengths = [int(t) for t in args.long_video_frames.split(",") if t.strip()]
        _video(model, ours, parts, args.video_frames, lengths, args.sample_repeats, res, device, amp)
        res["loadavg_1m_end"] = _loadavg()
        print(json.dumps(res))
        return 0
    med = statistics.median
    if "forward" in parts:
        x, y, _ = random_inputs(ours, 8, 0, device, torch.float32)
        model.eval()

        def fwd():
            with torch.inference_mode(), amp():
                return model(x, y)[0]
        ts, _ = timed(fwd, 1, args.repeats)
        res["forward_ms"] = round(1000 * med(ts), 2)
    if "train" in parts:
        x, y, _ = random_inputs(ours, 8, 0, device, torch.float32)
        model.train()
        params = [p for k, p in model.named_parameters() if not k.startswith("learnable_self_denoiser")]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=True)

        def step(autocast: bool):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                z, _, _, logdets = model(x, y)
                loss = model.get_loss(z, logdets)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        figures = [("train_step_ms", bf16)] + [("train_step_autocast_ms", True)] * (args.autocast and not bf16)
        for key, autocast in figures:
            ts, _ = timed(lambda: step(autocast), 1, args.repeats)
            res[key] = round(1000 * med(ts), 2)
        model.load_state_dict(cfg["state_dict"], strict=True)   # undo the steps before sampling
    z, y, y_null = random_inputs(ours, 4, 1, device, torch.float32)
    model.eval()

    def sample(jacobi: bool):
        kw = reverse_kwargs(jacobi)
        with torch.no_grad(), amp():
            return model(z, torch.cat([y, y_null]), reverse=True, **kw)
    seq = None
    if "sequential" in parts or "jacobi" in parts:
        reps = args.sample_repeats if "sequential" in parts else 1
        ts, seq = timed(lambda: sample(False), 1 if "sequential" in parts else 0, reps)
        if "sequential" in parts:
            res["sample_sequential_s"] = round(med(ts), 3)
    if "jacobi" in parts:
        ts, jac = timed(lambda: sample(True), 1, args.sample_repeats)
        res["sample_jacobi_s"] = round(med(ts), 3)
        res["jacobi_max_abs_err"] = round((jac.float() - seq.float()).abs().max().item(), 5)
    res["loadavg_1m_end"] = _loadavg()
    print(json.dumps(res))
    return 0


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _process_group(device: torch.device) -> str | None:
    """The official Jacobi sampler all-reduces its convergence flag (a tensor on the model's device): give it a
    one-process group. gloo reduces CPU and CUDA tensors alike; should it refuse a CUDA tensor here, NCCL (what
    the official torchrun launch uses on GPUs) is tried instead. Returns the backend."""
    import torch.distributed as dist
    if not dist.is_available():
        return None
    if dist.is_initialized():
        return dist.get_backend()
    backends = ["gloo"] + (["nccl"] if device.type == "cuda" and dist.is_nccl_available() else [])
    for i, backend in enumerate(backends):
        store = tempfile.NamedTemporaryFile(prefix="official_baseline_", delete=False)
        store.close()
        dist.init_process_group(backend, init_method=f"file://{store.name}", rank=0, world_size=1)
        try:
            flag = torch.ones((), dtype=torch.bool, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            sync(device)
            return backend
        except Exception as e:
            dist.destroy_process_group()
            if i == len(backends) - 1:
                raise RuntimeError(f"no process group reduces a {device.type} tensor here: {e}") from e
            print(f"{backend} cannot all_reduce a {device.type} tensor ({e}); trying {backends[i + 1]}",
                  file=sys.stderr)
    return None


def _video(model, ours, parts: set, frames: int, lengths: list[int], repeats: int, res: dict, device,
           amp) -> None:
    """The official video Jacobi sampler + learnable denoiser, the way `starflow bench` times ours."""
    c = ours.config
    window = c.local_attn_window
    context = window - 1 if window else None
    model.eval()

    def run(z, y, y_null):
        kw = reverse_kwargs(True, context)
        with torch.no_grad(), amp(), contextlib.redirect_stdout(sys.stderr):   # it prints when it re-encodes context
            x = model(z, torch.cat([y, y_null]), reverse=True, **kw)
            return x, _official_denoise(model, x, y, window, c.denoiser_window)
    med = statistics.median
    per_frame = {}
    res["video_frames"], res["video_window"], res["video_context"] = frames, window, context
    for T in ([frames] if "video_jacobi" in parts else []) + [t for t in lengths if "long_video" in parts]:
        if str(T) in per_frame:
            continue
        z, y, y_null = random_inputs(ours, 2, 2, device, torch.float32, frames=T)   # starflow bench's seed + 2
        ts, (x, _) = timed(lambda: run(z, y, y_null), 1, repeats)
        if T == frames and "video_jacobi" in parts:
            res["video_jacobi_s"] = round(med(ts), 3)
            # the official sequential sampler stops at its window (its cache has no room past it): the exact
            # sample of the same equations is our sequential sampler's, which slides the window the same way
            exact = our_sample(ours, z, y, y_null, method="sequential", guidance=2.0, attn_window=window,
                               context_length=context)
            res["video_jacobi_max_abs_err"] = round((x.float() - exact.float()).abs().max().item(), 5)
        if "long_video" in parts and T in lengths:
            per_frame[str(T)] = round(med(ts) / T, 4)
    if per_frame:
        res["long_video_s_per_frame"] = per_frame


def _official_denoise(model, x, y, window, denoiser_window):
    """The video branch of the official utils/inference.py process_denoising with its learnable denoiser
    (apply_denoising: x - model(x, y, denoiser=True) * 0.3 * (sigma - 0) / sigma), in its windows."""
    if getattr(model, "learnable_self_denoiser", None) is None:
        return x
    x_all = x.clone()
    s_idx, overlap = 0, 0
    steps = x_all.size(1) if window is None else window
    while s_idx < x_all.size(1):
        chunk = x_all[:, s_idx:s_idx + steps].detach().clone()
        out = chunk - model(chunk, y, denoiser=True) * 0.3 * (DENOISE_SIGMA - 0) / DENOISE_SIGMA
        x_all[:, s_idx + overlap:s_idx + steps] = out[:, overlap:]
        overlap = steps - 1 if denoiser_window is None else denoiser_window
        s_idx += steps - overlap
    return x_all


if __name__ == "__main__":
    sys.exit(main())
