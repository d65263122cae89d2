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
`starflow bench --reference` reads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from starflow.evaluation.bench import _inputs, load_bench_model

# keys the official training script takes from its command line when a config does not carry them
_DEFAULTS = dict(use_pretrained_lm=None, use_mm_attn=0, noise_embed_denoiser=0, gradient_checkpoint=0,
                 gradient_checkpoint_mlp=None, top_block_channels=None)


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


def timed(fn, warmup: int, repeats: int) -> tuple[list[float], object]:
    out = None
    for _ in range(warmup):
        out = fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return ts, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, required=True, help="checkout of apple/ml-starflow")
    ap.add_argument("--model", type=Path, required=True, help="model file in the conformance format")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-repeats", type=int, default=3)
    ap.add_argument("--parts", default="forward,train,sequential,jacobi")
    ap.add_argument("--autocast", action="store_true",
                    help="also time the training step under bf16 autocast (train_step_autocast_ms): the official "
                         "train.py's autocast, which names device 'cuda' and so does nothing on a CPU, pointed "
                         "at this device")
    args = ap.parse_args(argv)
    if not (args.code / "transformer_flow.py").is_file():
        raise SystemExit(f"{args.code}: no transformer_flow.py (give a checkout of apple/ml-starflow)")
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.code.resolve()))
    import transformer_flow as tf

    cfg = torch.load(args.model, map_location="cpu", weights_only=True)
    model = build_official(tf, cfg["config"]).float()
    model.load_state_dict(cfg["state_dict"], strict=True)
    ours = load_bench_model(args.model)            # only for the input shapes: the bench's own inputs
    parts = set(args.parts.split(","))
    res: dict = {"impl": "official apple/ml-starflow", "code": str(args.code), "model": str(args.model),
                 "threads": torch.get_num_threads(), "torch": torch.__version__}
    med = statistics.median
    if "forward" in parts:
        x, y, _ = _inputs(ours, 8, 0, "cpu", torch.float32)
        model.eval()

        def fwd():
            with torch.inference_mode():
                return model(x, y)[0]
        ts, _ = timed(fwd, 1, args.repeats)
        res["forward_ms"] = round(1000 * med(ts), 2)
    if "train" in parts:
        x, y, _ = _inputs(ours, 8, 0, "cpu", torch.float32)
        model.train()
        params = [p for k, p in model.named_parameters() if not k.startswith("learnable_self_denoiser")]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=True)

        def step(autocast: bool):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                z, _, _, logdets = model(x, y)
                loss = model.get_loss(z, logdets)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for key, autocast in [("train_step_ms", False)] + [("train_step_autocast_ms", True)] * args.autocast:
            ts, _ = timed(lambda: step(autocast), 1, args.repeats)
            res[key] = round(1000 * med(ts), 2)
        model.load_state_dict(cfg["state_dict"], strict=True)   # undo the steps before sampling
    z, y, y_null = _inputs(ours, 4, 1, "cpu", torch.float32)
    model.eval()

    def sample(jacobi: bool):
        kw = dict(guidance=2.0, guide_top=None, verbose=False, return_sequence=False, jacobi=int(jacobi),
                  context_length=None)
        kw.update(dict(jacobi_th=1e-3, jacobi_block_size=16, jacobi_max_iter=32) if jacobi else
                  dict(attn_temp=1.0, annealed_guidance=False))
        with torch.no_grad():
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
        res["jacobi_max_abs_err"] = round((jac - seq).abs().max().item(), 5)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
