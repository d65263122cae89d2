"""`starflow generate`, `starflow generate-video`, `starflow convert`: pictures and videos from prompts."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import check_output_file, check_output_folder
from ..sampling.options import DENOISER_PRECISIONS, DRAFT_TH_FACTOR, WINDOW_ROWS, WINDOW_WIDTH
from .checks import check_device, positive_int


def register(sub) -> None:
    img = sub.add_parser("generate", help="generate images from prompts (a grid when several)",
                         description="Generate images; several prompts or images per prompt make a grid, "
                                     "one row per prompt.")
    _model_args(img)
    _sampling_args(img)
    img.add_argument("-n", "--num-images", type=positive_int, default=1, help="images per prompt (default 1)")
    img.add_argument("--out", type=Path, default=None, help="output image (.png, .jpg, ...): one grid of all images")
    img.add_argument("--out-dir", type=Path, default=None,
                     help="also (or instead) one file per image in this folder, NNNN_prompt.png, with prompts.txt "
                          "(as the official sample.py --caption file.txt --save_folder 1)")
    _overwrite_arg(img)
    img.set_defaults(func=run_generate)

    vid = sub.add_parser("generate-video", help="generate videos from prompts (and a first frame)",
                         description="Generate videos (MP4 or GIF); several videos are tiled into one.")
    _model_args(vid)
    _sampling_args(vid)
    vid.add_argument("-n", "--num-videos", type=positive_int, default=1, help="videos per prompt (default 1)")
    vid.add_argument("--frames", type=positive_int, default=None,
                     help="pixel frames (default: the trained length, official vid_size: 81); longer ones use the "
                          "sliding window; 1 makes an image under the 'An image:' template, as the official "
                          "--target_length 1 (--out may then be a .png)")
    vid.add_argument("--fps", type=positive_int, default=None,
                     help="frames per second (default: the model's; official: vid_size's, 16, as --out_fps 16 of "
                          "its video script)")
    vid.add_argument("--image", type=Path, default=None, help="first frame: image-to-video")
    vid.add_argument("--video", type=Path, default=None,
                     help="a video to edit (GIF / MP4 of the model's frame size): video-to-video. The flow is "
                          "inverted on it and its noise sampled again under the prompt(s)")
    vid.add_argument("--source-prompt", default=None,
                     help="with --video: the prompt the video was made with (default: the empty prompt)")
    vid.add_argument("--context-length", type=positive_int, default=None,
                     help="long videos: latent frames of context re-encoded per window (default: the model's; "
                          "official checkpoints 16, sample.py's --context_length; others window - 1)")
    vid.add_argument("--out", type=Path, default=None, help="output video (.mp4 or .gif): all videos tiled")
    vid.add_argument("--out-dir", type=Path, default=None,
                     help="also (or instead) one file per video in this folder, NNNN_prompt.mp4 (or the --out "
                          "suffix), with prompts.txt (as the official --caption file.txt --save_folder 1)")
    _overwrite_arg(vid)
    vid.set_defaults(func=run_generate_video)

    conv = sub.add_parser("convert", help="official config + .pth (or a trained run) -> our pipeline directory")
    src = conv.add_mutually_exclusive_group(required=True)
    src.add_argument("--official-config", type=Path, help="official YAML (arguments: list)")
    src.add_argument("--trained", type=Path, help="a folder written by `starflow train`")
    conv.add_argument("--checkpoint", type=Path, help="official .pth state dict (with --official-config)")
    conv.add_argument("--text-encoder", default=None, help="text encoder spec replacing the official name, "
                                                           "e.g. t5:/models/flan-t5-xl")
    conv.add_argument("--autoencoder", default=None, help="autoencoder spec replacing the official name, "
                                                          "e.g. sd-vae:/models/sd-vae-ft-ema")
    conv.add_argument("--copy-components", action="store_true",
                      help="copy local text encoder / autoencoder folders into the output")
    conv.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                      help="precision of the written flow weights (default fp32; bf16 halves the folder)")
    conv.add_argument("--out", type=Path, required=True, help="output pipeline directory")
    _overwrite_arg(conv)
    conv.set_defaults(func=run_convert)


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it exists (without it an existing output is an error, checked before "
                        "any work)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, default=None, help="more prompts, one per line")
    model_source_args(p)


def model_source_args(p: argparse.ArgumentParser) -> None:
    """Where the pipeline comes from, its device and precision: what every command that loads one takes."""
    p.add_argument("--model", type=Path, help="pipeline directory (pipeline.json) or a `starflow train` folder")
    p.add_argument("--official-config", type=Path,
                   help="official YAML config, or one of configs/*.yaml (with --checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="official .pth checkpoint (with --official-config)")
    p.add_argument("--text-encoder", default=None, help="text encoder spec overriding the stored / official one")
    p.add_argument("--autoencoder", default=None, help="autoencoder spec overriding the stored / official one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="precision of the weights (default fp32). bf16: the official sampler's (its FSDP mixed "
                        "precision runs the weights in bf16), half the memory; the checkpoint is read tensor by "
                        "tensor straight into it, and the text encoder and autoencoder load in bf16 too")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative-prompt", default=None, help="prompt of the unconditional guidance branch")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight, official --cfg (default: the model's: for official "
                        "checkpoints the official sampling scripts' 3.6 (image) / 3.5 (video), not the training "
                        "YAML's cfg; for `starflow train` exports log.sample_guidance)")
    p.add_argument("--sampler", dest="method", choices=["jacobi", "sequential"], default=None,
                   help="jacobi (parallel fixed-point iteration, default) or sequential (token by token, exact)")
    p.add_argument("--jacobi-block-size", type=positive_int, default=None,
                   help="tokens solved together (default: the model's; official scripts: 16 image, 32 video)")
    p.add_argument("--jacobi-th", "--jacobi-threshold", dest="jacobi_th", type=float, default=None,
                   help="relative squared change that ends a Jacobi chunk, 0: run every iteration (default: the "
                        "model's; official scripts: 0.001)")
    p.add_argument("--jacobi-max-iter", type=positive_int, default=None,
                   help="iterations per Jacobi chunk at most (default: the model's; official sample.py: 32)")
    p.add_argument("--jacobi-draft", choices=["auto", "bf16", "none"], default=None,
                   help="bf16: solve each flow block in bfloat16 first, then accept every token by the full-precision "
                        "rule (faster on CPUs with AMX and on GPUs; same accuracy); auto: bf16 where that holds")
    p.add_argument("--jacobi-schedule", choices=["official", "sliding"], default=None,
                   help="official: chunks of --jacobi-block-size solved one after the other (the official sampler); "
                        "sliding: a window that moves past each settled token (faster; default: the model's, official)")
    p.add_argument("--jacobi-window", type=int, default=None,
                   help=f"sliding schedule: its window in tokens (default 0: about {WINDOW_ROWS} rows, tokens x "
                        f"sequences, at {WINDOW_WIDTH} channels; fewer for wider models)")
    p.add_argument("--jacobi-draft-th", type=float, default=None,
                   help=f"threshold that stops the draft's own solve (default: {DRAFT_TH_FACTOR:g}x --jacobi-th; the "
                        "full-precision check after it accepts each token by --jacobi-th)")
    p.add_argument("--denoise", choices=["score", "learned", "none"], default=None)
    p.add_argument("--denoiser-precision", choices=list(DENOISER_PRECISIONS), default=None,
                   help="learned denoising: predict with a bf16 copy of the denoiser (the update stays in full "
                        "precision; moves a sample by ~1e-3, twice as fast on CPUs with AMX) or in the model's "
                        "precision; auto: bf16 where bf16 is native (default: the model's, 'model')")
    p.add_argument("--height", type=positive_int, default=None, help="pixels")
    p.add_argument("--width", type=positive_int, default=None, help="pixels")
    p.add_argument("--aspect-ratio", default=None,
                   help="1:1, 2:3, 3:2, 16:9, 9:16, 4:5, 5:4, 21:9 or 9:21, at the trained area (default: the model's; "
                        "official video: 16:9 as its script, others 1:1). A model trained with mixed aspect ratios "
                        "gets the ratio in its prompt, always; one trained on its square alone (official mix_aspect "
                        "0) makes that square only, and other sizes are refused")
    p.add_argument("--seed", type=int, default=0,
                   help="seed (default 0): the same seed gives the same output (the official scripts' seeds draw "
                        "other noise: they do not carry over)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="samples per forward pass (default: all)")
    p.add_argument("--scale", type=positive_int, default=1, help="enlarge the written pictures (nearest) by this factor")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _prompts(args) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        if not args.prompts_file.exists():
            raise FileNotFoundError(f"prompts file not found: {args.prompts_file}")
        prompts += [ln.strip() for ln in args.prompts_file.read_text().splitlines() if ln.strip()]
    return prompts


def _device(name: str | None) -> str:
    return check_device(name)


def load_any_pipeline(args, kind: str | None):
    """--model DIR (pipeline or trained folder) or --official-config + --checkpoint -> pipeline of `kind`
    ("image", "video", or None: whichever the files hold)."""
    from ..pipelines import BasePipeline, StarFlowPipeline, StarFlowVideoPipeline

    cls = {"video": StarFlowVideoPipeline, "image": StarFlowPipeline}.get(kind, BasePipeline)
    official = args.official_config is not None or args.checkpoint is not None
    if (args.model is None) == (not official):
        raise ValueError("give either --model DIR or --official-config X.yaml --checkpoint Y.pth")
    device = _device(args.device)
    from ..pipelines.base import PipelineKindError

    dtype = _dtype(args.dtype)
    try:
        if official:
            if args.official_config is None or args.checkpoint is None:
                raise ValueError("--official-config and --checkpoint go together")
            pipe = cls.from_official(args.official_config, args.checkpoint, text_encoder_spec=args.text_encoder,
                                     autoencoder_spec=args.autoencoder, torch_dtype=dtype, device=device)
        else:
            pipe = cls.from_pretrained(Path(args.model), text_encoder_spec=args.text_encoder,
                                       autoencoder_spec=args.autoencoder, torch_dtype=dtype, device=device)
    except PipelineKindError as e:
        what, command = ("a video", "generate-video") if e.kind == "video" else ("an image", "generate")
        raise ValueError(f"{e.where} holds {what} model: use `starflow {command}`") from None
    return pipe.to(device)


def _dtype(name: str):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def _call_kwargs(args) -> dict:
    """The pipeline call's arguments; the sampler settings under their SamplerOptions names (None: the
    pipeline's default)."""
    sampling = dict(guidance=args.guidance, method=args.method, jacobi_block_size=args.jacobi_block_size,
                    jacobi_th=args.jacobi_th, jacobi_max_iter=args.jacobi_max_iter, jacobi_draft=args.jacobi_draft,
                    jacobi_draft_th=args.jacobi_draft_th, jacobi_schedule=args.jacobi_schedule,
                    jacobi_window=args.jacobi_window, denoiser_precision=args.denoiser_precision)
    return dict(negative_prompt=args.negative_prompt, denoise=args.denoise, height=args.height, width=args.width,
                aspect_ratio=args.aspect_ratio, seed=args.seed, batch_size=args.batch_size,
                progress=not args.no_progress, **{k: v for k, v in sampling.items() if v is not None})


def _check_out(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise ValueError(f"--out {path}: {what} are written as {', '.join(allowed)}")


def _check_before_work(args, allowed: tuple[str, ...], what: str) -> None:
    """What can be known wrong before a model is loaded: the outputs, the sampler settings, the device."""
    from ..sampling.options import SamplerOptions

    if args.out is None and args.out_dir is None:
        raise ValueError(f"give --out FILE (one file of all {what}) and/or --out-dir DIR (one file each)")
    if args.out is not None:
        _check_out(args.out, allowed, what)
        check_output_file(args.out, args.overwrite)
    if args.out_dir is not None:
        check_output_folder(args.out_dir, args.overwrite, marker="prompts.txt", flag="--out-dir")
    kw = _call_kwargs(args)
    SamplerOptions().with_(**{k: kw[k] for k in kw if k in SamplerOptions.__dataclass_fields__})
    _device(args.device)


def run_generate(args) -> int:
    from ..data.media import IMAGE_SUFFIXES, save_image, save_image_grid
    from .outputs import write_each

    _check_before_work(args, IMAGE_SUFFIXES, "images")
    pipe = load_any_pipeline(args, "image")
    prompts = _prompts(args) or None
    out = pipe(prompts, num_images_per_prompt=args.num_images, num_images=args.num_images,
               output_type="pt", **_call_kwargs(args))
    x = out.images * 2 - 1                                       # (N, C, H, W) in [-1, 1]
    if args.out is not None:
        save_image_grid(x, args.out, nrow=args.num_images if prompts and len(prompts) > 1 else None,
                        padding=2 if len(x) > 1 else 0, scale=args.scale)
        print(f"wrote {len(x)} image(s) to {args.out}")
    if args.out_dir is not None:
        suffix = args.out.suffix.lower() if args.out is not None else ".png"
        write_each(x, out.prompts, args.num_images if prompts else 1, args.out_dir, suffix,
                   lambda img, path: save_image(img, path, scale=args.scale))
        print(f"wrote {len(x)} image file(s) and prompts.txt to {args.out_dir}")
    return 0


def run_generate_video(args) -> int:
    from ..data.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, save_image, save_image_grid, save_video
    from .outputs import write_each

    still = args.frames == 1             # an image, as the official --target_length 1
    _check_before_work(args, VIDEO_SUFFIXES + (IMAGE_SUFFIXES if still else ()), "videos")
    if args.source_prompt is not None and args.video is None:
        raise ValueError("--source-prompt goes with --video (the video to edit)")
    pipe = load_any_pipeline(args, "video")
    prompts = _prompts(args) or None
    kw = _call_kwargs(args)
    if args.context_length is not None:
        kw["context_length"] = args.context_length
    out = pipe(prompts, num_videos_per_prompt=args.num_videos, num_videos=args.num_videos, num_frames=args.frames,
               fps=args.fps, image=args.image, video=args.video, source_prompt=args.source_prompt, output_type="pt",
               **kw)
    x = out.frames * 2 - 1                                       # (N, T, C, H, W) in [-1, 1]
    nrow = args.num_videos if prompts and len(prompts) > 1 else None
    if args.out is not None:
        if args.out.suffix.lower() in IMAGE_SUFFIXES:           # --frames 1
            save_image_grid(x[:, 0], args.out, nrow=nrow, padding=2 if len(x) > 1 else 0, scale=args.scale)
            print(f"wrote {len(x)} image(s) to {args.out}")
        else:
            save_video(x if len(x) > 1 else x[0], args.out, fps=out.fps, nrow=nrow, scale=args.scale)
            print(f"wrote {len(x)} video(s) of {x.shape[1]} frames at {out.fps} fps to {args.out}")
    if args.out_dir is not None:
        suffix = args.out.suffix.lower() if args.out is not None else (".png" if still else ".mp4")
        if suffix in IMAGE_SUFFIXES:
            write = (lambda v, path: save_image(v[0], path, scale=args.scale))
        else:
            write = (lambda v, path: save_video(v, path, fps=out.fps, scale=args.scale))
        write_each(x, out.prompts, args.num_videos if prompts else 1, args.out_dir, suffix, write)
        print(f"wrote {len(x)} file(s) and prompts.txt to {args.out_dir}")
    return 0


def run_convert(args) -> int:
    from ..pipelines import BasePipeline
    from ..pipelines.loading import PIPELINE_FILE

    check_output_folder(args.out, args.overwrite, marker=PIPELINE_FILE)
    if args.trained is not None:
        if args.checkpoint is not None:
            raise ValueError("--checkpoint goes with --official-config, not --trained")
        pipe = BasePipeline.from_pretrained(args.trained, torch_dtype=_dtype(args.dtype))
    else:
        if args.checkpoint is None:
            raise ValueError("--official-config needs --checkpoint (the official .pth)")
        pipe = BasePipeline.from_official(args.official_config, args.checkpoint, text_encoder_spec=args.text_encoder,
                                          autoencoder_spec=args.autoencoder, torch_dtype=_dtype(args.dtype))
    out = pipe.save_pretrained(args.out, copy_components=args.copy_components)
    n = sum(p.numel() for p in pipe.flow.parameters())
    print(f"wrote {pipe.kind} pipeline ({n / 1e6:.1f}M flow parameters) to {out}")
    return 0
