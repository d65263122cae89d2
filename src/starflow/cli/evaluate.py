"""`starflow evaluate FIGURE [FIGURE ...]`: the numbers papers report, on your data and models, offline.

    starflow evaluate bpd --model runs/digits_class_cond/final
    starflow evaluate fid kid --model DIR --ref REFERENCE_FOLDER --inception inception-2015-12-05.pt --num-samples 50000
    starflow evaluate clip-score --model DIR --prompts-file prompts.txt --clip ./clip-vit-large-patch14
    starflow evaluate prompt-accuracy --model runs/digits_t2i/final
    torchrun --nproc_per_node 8 -m starflow.cli.main evaluate bpd --model DIR     # the same figure, 8 processes

Prints a table and writes a JSON report (--out) with every setting behind each figure. Work that takes long is
kept under --work-dir (bits/dim partial sums, generated samples, features) and reused by a rerun.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FIGURES = ("bpd", "fid", "kid", "clip-score", "prompt-accuracy")
SAMPLE_FIGURES = ("fid", "kid", "clip-score")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="bits/dim, FID, KID, CLIP score, prompt accuracy: a table and a JSON report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figures", nargs="+", choices=FIGURES, metavar="FIGURE", help=f"one or more of {', '.join(FIGURES)}")
    m = p.add_argument_group("model")
    m.add_argument("--model", type=Path, help="pipeline directory (pipeline.json) or a `starflow train` folder")
    m.add_argument("--official-config", type=Path, help="official YAML config (with --checkpoint)")
    m.add_argument("--checkpoint", type=Path, help="official .pth checkpoint (with --official-config)")
    m.add_argument("--text-encoder", default=None, help="text encoder spec overriding the stored / official one")
    m.add_argument("--autoencoder", default=None, help="autoencoder spec overriding the stored / official one")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    d = p.add_argument_group("data (default: what a trained model was trained on)")
    d.add_argument("--data", choices=["digits", "moving_digits", "image_folder", "video_folder"], default=None)
    d.add_argument("--data-path", type=Path, default=None, help="the folder of --data image_folder / video_folder")
    d.add_argument("--split", choices=["test", "train"], default="test",
                   help="bundled data: the held-out split (default) or the training split; a folder is taken whole")
    d.add_argument("--data-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other data keys, as in training configs (image_size=256 channels=3 num_frames=16 ...)")
    d.add_argument("--dequantize", action="store_true", help="bits/dim protocol: uniform dequantisation")
    d.add_argument("--noise-std", type=float, default=None, help="bits/dim protocol: Gaussian noise of this sigma")
    b = p.add_argument_group("bits/dim")
    b.add_argument("--draws", type=int, default=4, help="dequantisation / noise draws per item (default 4)")
    b.add_argument("--max-items", type=int, default=0, help="evaluate the first N items only (default: all)")
    b.add_argument("--batch-size", type=int, default=64, help="items or samples per forward pass (default 64)")
    s = p.add_argument_group("samples (FID, KID, CLIP score, prompt accuracy)")
    s.add_argument("--num-samples", type=int, default=10000, help="generated pictures (default 10000; papers: 50000)")
    s.add_argument("--samples-per-prompt", type=int, default=20, help="prompt accuracy: samples per digit prompt")
    s.add_argument("--prompts-file", type=Path, default=None, help="prompts, one per line, used in turn")
    s.add_argument("--samples-dir", type=Path, default=None, help="where samples go (default WORK_DIR/samples)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the model's)")
    s.add_argument("--negative-prompt", default=None)
    s.add_argument("--sampler", dest="method", choices=["jacobi", "sequential"], default=None)
    s.add_argument("--jacobi-block-size", type=int, default=None)
    s.add_argument("--jacobi-th", "--jacobi-threshold", dest="jacobi_th", type=float, default=None)
    s.add_argument("--jacobi-max-iter", type=int, default=None)
    s.add_argument("--denoise", choices=["score", "learned", "none"], default=None)
    f = p.add_argument_group("FID / KID / CLIP")
    f.add_argument("--ref", type=Path, default=None, help="reference picture folder (default: the data's pictures)")
    f.add_argument("--ref-limit", type=int, default=0, help="use the first N reference pictures (default: all)")
    f.add_argument("--inception", type=Path, default=None, help="inception-2015-12-05.pt (file or folder)")
    f.add_argument("--kid-subsets", type=int, default=100)
    f.add_argument("--kid-subset-size", type=int, default=1000)
    f.add_argument("--clip", default=None, help="local CLIP folder (or a model id in the Hugging Face cache)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("evaluation.json"), help="JSON report (default evaluation.json)")
    o.add_argument("--work-dir", type=Path, default=None, help="partial results, samples, features "
                                                              "(default: OUT without .json, plus .work)")
    o.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _data_overrides(args) -> dict:
    from ..training.config import apply_overrides

    items = [i if "=" in i else f"{i}=" for i in args.data_set]
    extra = apply_overrides({}, items)
    nested = [k for k, v in extra.items() if isinstance(v, dict)]
    if nested:
        raise ValueError(f"--data-set takes data keys (image_size=64), not sections: {', '.join(nested)}")
    flags = {"dataset": args.data, "path": str(args.data_path) if args.data_path else None,
             "dequantize": True if args.dequantize else None, "noise_std": args.noise_std}
    return {**extra, **{k: v for k, v in flags.items() if v is not None}}


def load_pipeline_for(args, device):
    """--model DIR (pipeline or trained folder) or --official-config + --checkpoint -> (pipeline, model info)."""
    from ..evaluation.report import file_identity
    from ..pipelines import BasePipeline

    official = args.official_config is not None or args.checkpoint is not None
    if (args.model is None) == (not official):
        raise ValueError("give either --model DIR or --official-config X.yaml --checkpoint Y.pth")
    kw = dict(text_encoder_spec=args.text_encoder, autoencoder_spec=args.autoencoder)
    if official:
        if args.official_config is None or args.checkpoint is None:
            raise ValueError("--official-config and --checkpoint go together")
        pipe = BasePipeline.from_official(args.official_config, args.checkpoint, **kw)
        info = {"source": "official", "config": file_identity(args.official_config),
                "weights": file_identity(args.checkpoint)}
    else:
        pipe = BasePipeline.from_pretrained(args.model, **kw)
        weights = args.model / "flow" / "model.safetensors"
        if not weights.exists():                       # older folders
            weights = next(w for w in (args.model / "flow.safetensors", args.model / "model.safetensors")
                           if w.exists())
        info = {"source": "trained" if pipe.training_info else "pipeline", "weights": file_identity(weights)}
    info.update(kind=pipe.kind, text_encoder=pipe.text_encoder_spec, autoencoder=pipe.autoencoder_spec,
                parameters=sum(p.numel() for p in pipe.flow.parameters()))
    return pipe.to(device), info


def _call(args) -> dict:
    return dict(guidance=args.guidance, negative_prompt=args.negative_prompt, method=args.method,
                jacobi_block_size=args.jacobi_block_size, jacobi_th=args.jacobi_th,
                jacobi_max_iter=args.jacobi_max_iter, denoise=args.denoise)


def run(args) -> int:
    import torch

    from ..evaluation.report import format_table, table_rows, write_report
    from ..training.distributed import setup_distributed

    figures = list(dict.fromkeys(args.figures))
    if args.draws < 1 or args.batch_size < 1 or args.num_samples < 2 or args.samples_per_prompt < 1:
        raise ValueError("--draws, --batch-size and --samples-per-prompt must be >= 1, --num-samples >= 2")
    ctx = setup_distributed("none")
    try:
        if ctx.distributed and figures != ["bpd"]:
            raise ValueError("under torchrun only bpd is computed across processes; run the other figures alone")
        device = args.device or (str(ctx.device) if ctx.distributed else ("cuda" if torch.cuda.is_available()
                                                                            else "cpu"))
        work = args.work_dir or args.out.with_name(args.out.name.removesuffix(".json") + ".work")
        pipe, info = load_pipeline_for(args, device)
        from ..evaluation import runner

        results, data_info = {}, None
        for fig in figures:
            if fig == "bpd":
                results["bpd"], data_info = runner.run_bpd(pipe, info, args, _data_overrides(args), work, ctx)
            elif fig == "prompt-accuracy":
                results[fig] = runner.run_prompt_accuracy(pipe, args, _call(args))
        sample_figs = [f for f in figures if f in SAMPLE_FIGURES]
        if sample_figs:
            out, d = runner.run_sample_figures(pipe, info, args, sample_figs, _data_overrides(args), work, _call(args))
            results.update(out)
            data_info = data_info or d
        if ctx.is_main:
            results = {f: results[f] for f in figures}
            report = {"command": "starflow " + " ".join(sys.argv[1:]) if sys.argv else "", "model": info,
                      "data": data_info, "work_dir": str(work), "results": results}
            path = write_report(args.out, report)
            print(format_table(table_rows(results)))
            print(f"wrote {path}")
    finally:
        ctx.cleanup()
    return 0
