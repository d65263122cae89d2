"""What the page does, without the page: one pipeline, its requests checked, run one at a time, written to files.

Every request goes through a pipeline's public call (the same entry points as `starflow generate` /
`generate-video`) or `pipelines.likelihood`; nothing here samples by itself. A user's mistake raises
`InputError` (a ValueError) with a sentence for the page; the tabs turn it into a message there.
"""
from __future__ import annotations

import itertools
import json
import math
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["InputError", "Result", "ModelSession", "DISPLAY_SIDE"]

DISPLAY_SIDE = 256          # tiny pictures (8x8 digits) are enlarged, nearest, to about this many pixels a side


class InputError(ValueError):
    """Bad input from the page: shown there as a message, the server keeps serving."""


@dataclass
class Result:
    images: list = field(default_factory=list)        # PIL images to show (enlarged when tiny)
    video: Path | None = None                         # MP4 to play
    files: list[Path] = field(default_factory=list)   # downloads
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    summary: str = ""                                 # one line: what was made, in how long

    def info_markdown(self) -> str:
        """The time taken and every setting used, for under the result."""
        rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in self.settings.items())
        return f"**{self.summary}**\n\n| setting | value |\n| --- | --- |\n{rows}"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "\\|") if not isinstance(v, str) or v else "(empty)"


def display_scale(height: int, width: int, side: int = DISPLAY_SIDE) -> int:
    """Integer nearest-neighbour enlargement that brings the longer side near `side` (1 for large pictures)."""
    return max(1, side // max(height, width))


class ModelSession:
    """A pipeline behind the page. `lock`: requests never run on top of each other, whoever calls."""

    def __init__(self, pipe, out_dir: str | Path | None = None, *, name: str = "model", max_samples: int = 16,
                 max_videos: int = 4, dequantized: bool = False):
        self.pipe, self.name = pipe, name
        self.dequantized = dequantized          # trained on dequantised pixels: likelihoods take bin centres
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="starflow-serve-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples, self.max_videos = max_samples, max_videos
        self.lock = threading.Lock()
        self._counter = itertools.count(1)    # thread-safe: one folder per request

    # ---- what the model can do ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.pipe.kind

    @property
    def conditioned(self) -> bool:
        return self.pipe.config.txt_dim > 0

    @property
    def labels(self) -> int | None:
        """Number of classes for a class-label model (prompts are class indices), else None."""
        n = getattr(self.pipe.text_encoder, "num_classes", None) if self.conditioned else None
        return int(n) if n is not None else None

    @property
    def takes_aspect_ratio(self) -> bool:
        return bool(self.pipe.config.rope)      # learned positions (rope=0) know one grid only

    def default_size(self) -> tuple[int, int]:
        from ..pipelines.likelihood import expected_image_size
        return expected_image_size(self.pipe)

    def prompt_hint(self) -> str:
        if not self.conditioned:
            return "unconditional model: no prompt"
        if self.labels is not None:
            return f"a class index, 0 to {self.labels - 1}"
        return "describe the picture"

    # ---- checks -------------------------------------------------------------------------------------
    def _prompt(self, prompt: str | None, required: bool = True) -> str | None:
        prompt = (prompt or "").strip()
        if not self.conditioned:
            if prompt:
                raise InputError("this model is unconditional: leave the prompt empty")
            return None
        if not prompt:
            if required:
                raise InputError(f"type a prompt: this model is text conditioned ({self.prompt_hint()})")
            return None
        return prompt

    @staticmethod
    def _int(value, name: str, lo: int, hi: int | None = None) -> int:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a whole number, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise InputError(f"{name} must be a whole number, got {value!r}")
        v = int(f)
        if v < lo or (hi is not None and v > hi):
            raise InputError(f"{name} must be between {lo} and {hi}, got {v}" if hi is not None
                             else f"{name} must be at least {lo}, got {v}")
        return v

    @staticmethod
    def _float(value, name: str, lo: float, hi: float | None = None) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
            # words, not < >: the page shows messages as HTML, escaped
            raise InputError(f"{name} must be at least {lo:g}" + (f" and at most {hi:g}" if hi is not None else "")
                             + f", got {value!r}")
        return v

    def _sampling(self, negative_prompt, guidance, sampler, block_size, threshold, seed) -> dict[str, Any]:
        """The call's sampler settings under their SamplerOptions names (None: the pipeline's default)."""
        d = self.pipe.defaults.sampling
        sampler = sampler or d.method
        if sampler not in ("jacobi", "sequential"):
            raise InputError(f"sampler must be 'jacobi' or 'sequential', not {sampler!r}")
        seed = self._int(-1 if seed is None or seed == "" else seed, "seed", -1, 2 ** 63 - 1)
        if seed < 0:                                # -1: a fresh seed, reported so that it can be repeated
            seed = secrets.randbelow(2 ** 31)
        guidance = d.guidance if guidance is None else guidance
        kw = dict(guidance=self._float(guidance, "guidance", 0.0, 100.0), method=sampler, seed=seed)
        if sampler == "jacobi":
            kw["jacobi_block_size"] = self._int(d.jacobi_block_size if block_size is None else block_size,
                                                "Jacobi block size", 1)
            kw["jacobi_th"] = self._float(d.jacobi_th if threshold is None else threshold,
                                          "Jacobi threshold (0: never stop early)", 0.0)
        negative = (negative_prompt or "").strip() or None
        if negative is not None and not self.conditioned:
            raise InputError("this model is unconditional: it takes no negative prompt")
        kw["negative_prompt"] = negative
        return kw

    def _aspect(self, aspect_ratio: str | None) -> str | None:
        default = self.pipe.defaults.aspect_ratio
        if not aspect_ratio or aspect_ratio == (default or "1:1"):
            return None                             # the model's default (None: trained square)
        if not self.takes_aspect_ratio:
            raise InputError("this model has learned positions for one grid: it makes one size only")
        return aspect_ratio

    def _folder(self, what: str) -> Path:
        d = self.out_dir / f"{next(self._counter):04d}-{what}-{time.strftime('%H%M%S')}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _run(self, fn: Callable[[], Any]):
        """Pipeline errors about the request (ValueError: a label out of range, too many frames...) are the
        user's to fix: they become InputError with the pipeline's own sentence."""
        with self.lock:
            t0 = time.perf_counter()
            try:
                out = fn()
            except InputError:
                raise
            except (ValueError, FileNotFoundError) as e:
                raise InputError(str(e)) from e
            return out, time.perf_counter() - t0

    # ---- requests -----------------------------------------------------------------------------------
    def text_to_image(self, prompt: str | None, negative_prompt: str | None = None, guidance: float | None = None,
                      sampler: str | None = None, jacobi_block_size: int | None = None,
                      jacobi_threshold: float | None = None, seed: int | None = 0, num_samples: int = 1,
                      aspect_ratio: str | None = None) -> Result:
        from ..data.media import save_image, save_image_grid, to_uint8

        if self.kind != "image":
            raise InputError("this is a video model: use the video tabs")
        d = self.pipe.defaults
        prompt = self._prompt(prompt)
        n = self._int(num_samples, "number of images", 1, self.max_samples)
        kw = self._sampling(negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed)
        ar = self._aspect(aspect_ratio)
        out, secs = self._run(lambda: self.pipe(prompt, num_images_per_prompt=n, num_images=n, aspect_ratio=ar,
                                                output_type="pt", **kw))
        x = out.images * 2 - 1                                                 # (N, C, H, W) in [-1, 1]
        H, W = x.shape[-2:]
        k = display_scale(H, W)
        folder = self._folder("image")
        files = [save_image(x[i], folder / f"sample_{i:02d}.png") for i in range(len(x))]
        if len(x) > 1:
            files.insert(0, save_image_grid(x, folder / f"grid_x{k}.png", scale=k))
        from PIL import Image
        shown = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).resize((W * k, H * k), Image.NEAREST)
                 for a in to_uint8(x)]
        settings = self._settings(prompt, kw, size=f"{W}x{H} px", samples=n, aspect_ratio=ar or d.aspect_ratio)
        files.append(self._write_settings(folder, settings))
        return Result(images=shown, files=files, settings=settings, seconds=secs,
                      summary=f"{n} image{'s' * (n > 1)} of {W}x{H} px in {secs:.2f} s")

    def text_to_video(self, prompt: str | None, negative_prompt: str | None = None, guidance: float | None = None,
                      sampler: str | None = None, jacobi_block_size: int | None = None,
                      jacobi_threshold: float | None = None, seed: int | None = 0, num_samples: int = 1,
                      num_frames: int | None = None, fps: int | None = None, image=None,
                      aspect_ratio: str | None = None, require_image: bool = False) -> Result:
        """Text-to-video; with `image` (a file or PIL image, resized and centre-cropped) image-to-video."""
        from ..data.media import save_video

        if self.kind != "video":
            raise InputError("this is an image model: it makes no videos")
        if require_image and image is None:
            raise InputError("upload a first frame: image-to-video continues a picture")
        d = self.pipe.defaults
        prompt = self._prompt(prompt)
        n = self._int(num_samples, "number of videos", 1, self.max_videos)
        frames = self._int(d.num_frames if num_frames is None else num_frames, "frames", 1, 16 * (d.num_frames or 16))
        fps = self._int(fps or d.fps or 8, "fps", 1, 120)
        kw = self._sampling(negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed)
        ar = self._aspect(aspect_ratio)
        first = None
        if image is not None:
            from ..data.media import load_image
            first = load_image(image)                                      # the pipeline resizes and crops it
        out, secs = self._run(lambda: self.pipe(prompt, num_videos_per_prompt=n, num_videos=n, num_frames=frames,
                                                fps=fps, image=first, aspect_ratio=ar, output_type="pt", **kw))
        x = out.frames * 2 - 1                                                 # (N, T, C, H, W) in [-1, 1]
        T, (H, W) = x.shape[1], x.shape[-2:]
        k = display_scale(H, W)
        folder = self._folder("video")
        files = [save_video(x if n > 1 else x[0], folder / f"video_x{k}{suffix}", fps=out.fps, nrow=n, scale=k)
                 for suffix in (".mp4", ".gif")]
        extra = dict(first_frame=f"uploaded {first.width}x{first.height}, resized and centre-cropped to {W}x{H}"
                     if first is not None else None)
        settings = self._settings(prompt, kw, size=f"{W}x{H} px", samples=n, frames=T, fps=out.fps,
                                  aspect_ratio=ar or d.aspect_ratio, **extra)
        files.append(self._write_settings(folder, settings))
        what = "image-to-video" if first is not None else "video"
        return Result(video=files[0], files=files, settings=settings, seconds=secs,
                      summary=f"{n} {what}{'s' * (n > 1)} of {T} frames, {W}x{H} px, in {secs:.2f} s")

    def _mask(self, mask, box: str | None):
        """The region to make: an image (white = make; thresholded), a (H, W) array, or a box 'x0,y0,x1,y1'."""
        if box and str(box).strip():
            try:
                vals = tuple(int(v) for v in str(box).replace(" ", "").split(","))
            except ValueError:
                raise InputError(f"box {box!r}: expected four integers x0,y0,x1,y1 in pixels") from None
            if len(vals) != 4:
                raise InputError(f"box {box!r}: expected four integers x0,y0,x1,y1 in pixels")
            if mask is not None:
                raise InputError("give either a mask or a box, not both")
            return vals
        if mask is None:
            raise InputError("paint the region to fill, upload a mask (white = fill) or give a box x0,y0,x1,y1")
        return mask

    def _picture_result(self, out, secs, what: str, kw: dict, **extra) -> Result:
        from ..data.media import save_image, save_video, to_uint8

        folder = self._folder(what)
        if self.kind == "video":
            x = out.frames * 2 - 1                                               # (1, T, C, H, W)
            H, W = x.shape[-2:]
            k = display_scale(H, W)
            files = [save_video(x[0], folder / f"{what}_x{k}{suffix}", fps=out.fps, scale=k)
                     for suffix in (".mp4", ".gif")]
            settings = self._settings(extra.pop("prompt"), kw, size=f"{W}x{H} px", frames=x.size(1), **extra)
            files.append(self._write_settings(folder, settings))
            return Result(video=files[0], files=files, settings=settings, seconds=secs,
                          summary=f"{what}: a video of {x.size(1)} frames, {W}x{H} px, in {secs:.2f} s")
        x = out.images * 2 - 1                                                   # (1, C, H, W)
        H, W = x.shape[-2:]
        k = display_scale(H, W)
        files = [save_image(x[0], folder / f"{what}.png"), save_image(x[0], folder / f"{what}_x{k}.png", scale=k)]
        from PIL import Image
        shown = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).resize((W * k, H * k), Image.NEAREST)
                 for a in to_uint8(x)]
        settings = self._settings(extra.pop("prompt"), kw, size=f"{W}x{H} px", **extra)
        files.append(self._write_settings(folder, settings))
        return Result(images=shown, files=files, settings=settings, seconds=secs,
                      summary=f"{what}: a {W}x{H} px picture in {secs:.2f} s")

    def _picture(self, picture):
        if picture is None:
            raise InputError("upload the picture" + (" (a video: GIF or MP4)" if self.kind == "video" else ""))
        return picture

    def inpaint(self, picture, mask=None, box: str | None = None, prompt: str | None = None,
                negative_prompt: str | None = None, guidance: float | None = None, sampler: str | None = None,
                jacobi_block_size: int | None = None, jacobi_threshold: float | None = None, seed: int | None = 0,
                iterations: int = 8) -> Result:
        """Fill a region of a picture (a video: of every frame) with `pipe.inpaint`; the rest is kept exactly."""
        picture = self._picture(picture)
        region = self._mask(mask, box)
        prompt = self._prompt(prompt)
        iterations = self._int(iterations, "iterations", 1, 64)
        kw = self._sampling(negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed)
        out, secs = self._run(lambda: self.pipe.inpaint(prompt, picture, region, iterations=iterations,
                                                        output_type="pt", **kw))
        return self._picture_result(out, secs, "inpaint", kw, prompt=prompt, iterations=iterations,
                                    region=f"box {region}" if isinstance(region, tuple) else "mask")

    def edit(self, picture, prompt: str | None = None, source_prompt: str | None = None, strength: float = 0.8,
             mask=None, box: str | None = None, negative_prompt: str | None = None, guidance: float | None = None,
             sampler: str | None = None, jacobi_block_size: int | None = None, jacobi_threshold: float | None = None,
             seed: int | None = 0) -> Result:
        """Change a picture towards a prompt with `pipe.edit` (the inversion of a picture is kept for its next
        edits); a mask or box limits the change."""
        picture = self._picture(picture)
        region = self._mask(mask, box) if (mask is not None or (box and str(box).strip())) else None
        prompt = self._prompt(prompt)
        source = (source_prompt or "").strip() or None
        strength = self._float(strength, "strength", 0.0, 1.0)
        kw = self._sampling(negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed)
        if self.kind == "video" and strength == 0 and region is None:   # video to video, as the CLI's --video
            out, secs = self._run(lambda: self.pipe(prompt, video=picture, source_prompt=source, output_type="pt",
                                                    **kw))
        else:
            out, secs = self._run(lambda: self.pipe.edit(prompt, picture, source_prompt=source, strength=strength,
                                                         mask_image=region, output_type="pt", **kw))
        return self._picture_result(out, secs, "edit", kw, prompt=prompt, source_prompt=source or prompt,
                                    strength=strength, region=None if region is None else
                                    (f"box {region}" if isinstance(region, tuple) else "mask"))

    def likelihood(self, image, prompt: str | None = None, resize: bool = False):
        """-> (ImageLikelihood, markdown explaining it)."""
        from ..pipelines.likelihood import image_likelihood

        if image is None:
            raise InputError("upload an image to score")
        prompt = self._prompt(prompt, required=False)
        res, secs = self._run(lambda: image_likelihood(self.pipe, image, prompt, resize=resize,
                                                       dequantized=self.dequantized))
        return res, likelihood_markdown(res, secs)

    # ---- settings -----------------------------------------------------------------------------------
    def _settings(self, prompt, kw: dict, **extra) -> dict[str, Any]:
        d = self.pipe.defaults
        s: dict[str, Any] = {"model": self.name, "prompt": prompt, "negative prompt": kw.get("negative_prompt"),
                             "guidance": kw["guidance"], "sampler": kw["method"]}
        if kw["method"] == "jacobi":
            s["Jacobi block size"] = kw["jacobi_block_size"]
            s["Jacobi threshold"] = kw["jacobi_th"]
        s["seed"] = kw["seed"]
        s["denoise"] = f"{d.denoise} (noise_std {d.noise_std:g})" if d.noise_std > 0 else "none"
        s.update({k.replace("_", " "): v for k, v in extra.items() if v is not None})
        s["device"] = str(self.pipe.device)
        return s

    @staticmethod
    def _write_settings(folder: Path, settings: dict) -> Path:
        path = folder / "settings.json"
        path.write_text(json.dumps(settings, indent=2, default=str))
        return path


def likelihood_markdown(r, seconds: float) -> str:
    cond = "the empty prompt (unconditional)" if r.prompt is None else f"the prompt `{r.prompt}`"
    lines = [f"**{r.bits_per_dim:.4f} bits/dim** under {cond} ({r.num_dims} dimensions, in {seconds:.2f} s)", ""]
    if r.bits_per_dim_unconditional is not None:
        gain = (r.bits_per_dim_unconditional - r.bits_per_dim) * r.num_dims
        lines += [f"- unconditional (empty prompt): {r.bits_per_dim_unconditional:.4f} bits/dim; the prompt makes "
                  f"the picture {gain:+.1f} bits more likely in all", ""]
    if r.space == "pixels":
        lines += [f"- as 8-bit pixel values: {r.bits_per_dim_8bit:.4f} bits per value", ""]
        where = "pixels: the figure is a density of the pixel values mapped to [-1, 1]"
    else:
        where = ("latents: bits per **latent** dimension (the flow models the autoencoder's latents, "
                 f"shape {tuple(r.input_shape)}), not comparable with bits per pixel")
    h, w = r.size
    lines += [f"- input space: {where}", f"- mapping: {r.mapping} ({w}x{h} px)",
              "- exact: -log p(x) through the flow's change of variables (no bound, no sampling)"]
    return "\n".join(lines)
