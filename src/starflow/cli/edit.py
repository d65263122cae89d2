"""`starflow inpaint` and `starflow edit`: fill a masked region, or change a picture towards a new prompt.

    starflow inpaint "a handwritten digit seven" --model DIR --image in.png --box 0,4,8,8 --out out.png
    starflow edit "a handwritten digit seven" --model DIR --image in.png --source-prompt "... three" --strength 0.6 --out out.png
Pictures are images (PNG...) for image models and videos (GIF, MP4) for video models; the output is written
the same way. Masks: a PNG (white = fill, thresholded at half intensity) or a box in pixels.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .generate import _call_kwargs, _check_out, _model_args, _prompts, _sampling_args, load_any_pipeline


def register(sub) -> None:
    inp = sub.add_parser("inpaint", help="fill the masked region of an image (or of every frame of a video)",
                         description="Fill a masked region under a prompt; the rest of the picture is kept exactly.")
    _common(inp)
    inp.add_argument("--inpaint-method", choices=["auto", "resample", "exact"], default="auto",
                     help="auto (default): exact through the caches where the known region is a prefix of the "
                          "deep block's order (a video's first frames), else resample")
    inp.add_argument("--iterations", type=int, default=8, help="resampling rounds in the flow's noise space")
    inp.set_defaults(func=run_inpaint)

    ed = sub.add_parser("edit", help="change an image (or video) towards a new prompt",
                        description="Invert the picture to its exact noise under the source prompt, move the noise "
                                    "by --strength towards fresh noise, and sample under the new prompt.")
    _common(ed)
    ed.add_argument("--source-prompt", default=None, help="what the picture shows (default: the new prompt)")
    ed.add_argument("--strength", type=float, default=0.5,
                    help="0: keep the picture's noise, 1: fresh noise (default 0.5)")
    ed.set_defaults(func=run_edit)


def _common(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--image", type=Path, required=True, help="the picture: an image, or a video (GIF / MP4)")
    p.add_argument("--mask", type=Path, default=None, help="mask PNG of the picture's size (white = fill)")
    p.add_argument("--box", default=None, help="mask box x0,y0,x1,y1 in pixels (x1, y1 exclusive)")
    p.add_argument("--out", type=Path, required=True, help="output image (.png ...) or video (.gif / .mp4)")


def _mask(args, required: bool):
    if args.mask is not None and args.box is not None:
        raise ValueError("give either --mask FILE or --box x0,y0,x1,y1, not both")
    if args.box is not None:
        try:
            box = tuple(int(v) for v in args.box.split(","))
        except ValueError:
            raise ValueError(f"--box {args.box!r}: expected four integers x0,y0,x1,y1") from None
        if len(box) != 4:
            raise ValueError(f"--box {args.box!r}: expected four integers x0,y0,x1,y1")
        return box
    if args.mask is not None:
        return args.mask
    if required:
        raise ValueError("inpainting needs a mask: --mask FILE (white = fill) or --box x0,y0,x1,y1")
    return None


def _prompt(args):
    prompts = _prompts(args)
    if len(prompts) > 1:
        raise ValueError(f"{len(prompts)} prompts: inpaint and edit take one prompt for the picture")
    return prompts[0] if prompts else None


def _write(pipe, out, args) -> Path:
    from ..data.media import save_image_grid, save_video

    if pipe.kind == "video":
        x = out.frames * 2 - 1                                    # (N, T, C, H, W)
        return save_video(x if len(x) > 1 else x[0], args.out, fps=out.fps, scale=args.scale)
    x = out.images * 2 - 1
    return save_image_grid(x, args.out, padding=2 if len(x) > 1 else 0, scale=args.scale)


def _load(args):
    from ..data.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if not args.image.exists():
        raise FileNotFoundError(f"--image {args.image}: no such file")
    pipe = load_any_pipeline(args, None)
    suffixes, what = (VIDEO_SUFFIXES, "videos") if pipe.kind == "video" else (IMAGE_SUFFIXES, "images")
    _check_out(args.out, suffixes, what)
    return pipe


def _kwargs(args) -> dict:
    kw = _call_kwargs(args)
    for name in ("height", "width", "aspect_ratio", "batch_size", "progress"):   # the picture sets the size
        kw.pop(name, None)
    return kw


def run_inpaint(args) -> int:
    mask = _mask(args, required=True)
    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    pipe = _load(args)
    out = pipe.inpaint(_prompt(args), args.image, mask, inpaint_method=args.inpaint_method, iterations=args.iterations,
                       output_type="pt", **_kwargs(args))
    print(f"wrote {_write(pipe, out, args)}")
    return 0


def run_edit(args) -> int:
    mask = _mask(args, required=False)
    pipe = _load(args)
    out = pipe.edit(_prompt(args), args.image, source_prompt=args.source_prompt, strength=args.strength,
                    mask_image=mask, output_type="pt", **_kwargs(args))
    print(f"wrote {_write(pipe, out, args)}")
    return 0
