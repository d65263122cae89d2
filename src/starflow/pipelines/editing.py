"""Inpainting and editing on the pipelines: pictures and masks in pixels, the work in the flow's space.

`pipe.inpaint(prompt, image, mask_image)` fills the masked pixels; `pipe.edit(prompt, image, strength=...)`
changes the picture towards a new prompt (optionally inside a mask); `pipe.invert(image, prompt)` gives
the exact noise of a picture, which `edit(..., inversion=...)` reuses (interactive editing: the inversion
is one likelihood pass, made once per picture and source prompt; the last few are also kept by the pipeline).
Images are (C, H, W) / (B, C, H, W) in [-1, 1], PIL images or files; videos (T, C, H, W) / (B, T, C, H, W)
or files (GIF / MP4). Masks: True / white where content is made; a PNG is thresholded at half intensity;
a box (x0, y0, x1, y1) in pixels, x1 and y1 exclusive. In latent space a latent cell is made when any
of its pixels is, and the known pixels are put back after decoding (the autoencoder blurs them).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..sampling.editing import INPAINT_METHODS, edit_noise, encode, inpaint
from ..sampling.options import SamplerOptions

__all__ = ["EditingMixin", "Inversion", "read_mask"]

_KEEP = 8    # inversions a pipeline keeps for repeated edits of the same pictures


@dataclass(frozen=True)
class Inversion:
    """A picture's exact noise under a prompt and guidance: sample(z, prompt, guidance) gives it back."""
    z: torch.Tensor               # model space, (B, [T,] C, h, w)
    known: torch.Tensor           # the picture in model space, same shape
    pixels: torch.Tensor          # the picture in pixels [-1, 1]
    prompt: tuple[str, ...] | None
    guidance: float
    aspect_ratio: str | None       # what the prompt template named (models trained on mixed aspect ratios)


def read_mask(mask: Any, height: int, width: int) -> torch.Tensor:
    """A mask -> bool (H, W) in pixels, True where content is made. `mask`: a file or PIL image (white =
    make; thresholded at half intensity), a box (x0, y0, x1, y1) in pixels, or an array / tensor of 0/1 or
    booleans of shape (H, W) (also (T, H, W) for videos)."""
    from PIL import Image

    if isinstance(mask, (tuple, list)) and len(mask) == 4 and all(isinstance(v, (int, np.integer)) for v in mask):
        x0, y0, x1, y1 = (int(v) for v in mask)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"box {tuple(mask)} is not inside the {width}x{height} picture "
                             f"(x0, y0, x1, y1 in pixels, 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})")
        m = torch.zeros(height, width, dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        return m
    if isinstance(mask, (str, bytes)) or hasattr(mask, "__fspath__") or isinstance(mask, Image.Image):
        from ..data.media import load_image
        img = load_image(mask).convert("L")
        if img.size != (width, height):
            raise ValueError(f"mask image is {img.size[0]}x{img.size[1]}; the picture is {width}x{height}")
        return torch.from_numpy(np.asarray(img) >= 128)
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    if m.dtype != torch.bool:
        if m.is_floating_point() and not torch.isfinite(m).all():
            raise ValueError("mask contains NaN or infinite values")
        vals = torch.unique(m)
        if not bool(((vals == 0) | (vals == 1)).all()):
            raise ValueError("a mask array must hold 0 / 1 or booleans (True where content is made); "
                             "images are thresholded, arrays are not")
        m = m.bool()
    if m.shape[-2:] != (height, width) or m.dim() not in (2, 3):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit the {width}x{height} picture: "
                         f"expected ({height}, {width})")
    return m


class EditingMixin:
    """inpaint / edit / invert for StarFlowPipeline and StarFlowVideoPipeline."""

    # ---- pictures and masks in the model's space -----------------------------------------------------
    def _pixels(self, image) -> tuple[torch.Tensor, str | None]:
        """A picture (image) or a video -> (pixels in [-1, 1], the aspect ratio its prompts name). Its size must
        be one the model makes (the trained square, or a trained aspect ratio)."""
        from PIL import Image

        video = self.kind == "video"
        C = self.pixel_channels
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") or isinstance(image, Image.Image):
            if video:
                from ..data.media import load_video
                x = torch.from_numpy(load_video(image)).float().permute(0, 3, 1, 2) / 127.5 - 1   # (T, C', H, W)
                if x.size(1) != C:
                    x = x.mean(1, keepdim=True) if C == 1 else x.expand(-1, C, -1, -1)
            else:
                from ..data.media import load_image
                img = load_image(image).convert("L" if C == 1 else "RGB")
                x = torch.from_numpy(np.asarray(img, dtype=np.float32).reshape(img.height, img.width, C))
                x = x.permute(2, 0, 1) / 127.5 - 1
        else:
            x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
        if x.dim() == (4 if video else 3):
            x = x[None]
        want = f"(B, T, {C}, H, W)" if video else f"(B, {C}, H, W)"
        if x.dim() != (5 if video else 4) or x.size(-3) != C:
            raise ValueError(f"picture of shape {tuple(x.shape)} does not fit the model: expected {want} in "
                             f"[-1, 1] ({C} channel(s))")
        try:
            ratio, _, _ = self._size(int(x.size(-2)), int(x.size(-1)), None)
        except ValueError as e:
            raise ValueError(f"picture of shape {tuple(x.shape)} does not fit the model: {e}") from None
        if not torch.isfinite(x).all():
            raise ValueError("the picture contains NaN or infinite values")
        return x.to(self.device), ratio

    def _to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> the flow's space: posterior-mean latents (one picture, one latent, on any device), then the
        input transform. Not noised: the inversion is exact for any input, and an unchanged edit gives the
        picture itself back."""
        if self.kind == "video":
            self.latent_frames(pixels.size(1))        # checks the frame count the autoencoder takes
        x = pixels
        if self.autoencoder is not None:
            with self._use(self.autoencoder) as ae:
                x = ae.encode(x, sample=False)
        if self.input_transform is not None:
            x, _ = self.input_transform.forward(x)
        return x.to(self.device, self.dtype)

    def _masks(self, mask_image, pixels: torch.Tensor, model_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pixel mask broadcastable to the pixels, model mask broadcastable to the flow's input). A 3-D mask
        is one per picture for image models and one per frame for video models."""
        video = self.kind == "video"
        H, W = pixels.shape[-2:]
        m = read_mask(mask_image, H, W)                                  # (H, W) or (N, H, W)
        if m.dim() == 3:
            n, what = (pixels.size(1), "frames") if video else (pixels.size(0), "pictures")
            if m.size(0) != n:
                raise ValueError(f"a mask per {what[:-1]} needs {n} of them ({m.size(0)} given)")
        px = m[None, :, None] if video and m.dim() == 3 else (m[:, None] if m.dim() == 3 else m[None, None])
        if video and px.dim() == 4:
            px = px[:, None]                                             # (1, 1, 1, H, W)
        mm = px.float().flatten(0, -3)[:, None]                          # (n, 1, H, W)
        sf = self.spatial_factor
        if sf > 1:   # a latent cell is made when any of its pixels is
            mm = F.max_pool2d(mm, sf)
        mm = mm.reshape(*px.shape[:-2], *mm.shape[-2:])
        if video and mm.size(1) > 1:                                     # frames -> latent frames, causally packed
            tf = self.temporal_factor
            first, rest = mm[:, :1], mm[:, 1:]
            if tf > 1 and rest.size(1):
                rest = rest.reshape(rest.size(0), -1, tf, *rest.shape[2:]).amax(2)
            mm = torch.cat([first, rest], 1)
        return px.to(self.device), mm.bool().to(self.device)

    def _finish(self, x: torch.Tensor, y, denoise: str, mask: torch.Tensor, known: torch.Tensor,
                pixels: torch.Tensor, mask_px: torch.Tensor, output_type: str, precision: str = "model"):
        """Denoise (precision: the learned denoiser's), keep the known part (model space), decode, put the known
        pixels back."""
        x = (self._denoise_video(x, y, denoise, None, precision) if self.kind == "video"
             else self._denoise(x, y, denoise, precision))
        x = torch.where(mask.expand_as(x), x, known)
        if output_type == "latent":
            return x
        out = self._decode(x)
        return torch.where(mask_px.to(out.device).expand_as(out), out, pixels.to(out.dtype).expand_as(out))

    def _outputs(self, x: torch.Tensor, prompts, output_type: str):
        from .image import ImagePipelineOutput, convert_images
        if self.kind != "video":
            return ImagePipelineOutput(images=x if output_type == "latent" else convert_images(x, output_type),
                                       prompts=prompts)
        from .video import VideoPipelineOutput
        if output_type == "latent":
            return VideoPipelineOutput(frames=x, prompts=prompts, fps=int(self.defaults.fps or 8))
        N, T = x.shape[:2]
        flat = convert_images(x.flatten(0, 1), output_type)
        frames = [flat[i * T:(i + 1) * T] for i in range(N)] if output_type == "pil" else \
            flat.reshape(N, T, *flat.shape[1:])
        return VideoPipelineOutput(frames=frames, prompts=prompts, fps=int(self.defaults.fps or 8))

    def _texts(self, prompt, negative_prompt, n: int, guidance: float, ratio: str | None):
        c = self.config
        prompts = self._prompts(prompt, conditioned=c.txt_dim > 0)
        if prompts is not None and len(prompts) not in (1, n):
            raise ValueError(f"{len(prompts)} prompts for {n} pictures: give one, or one per picture")
        if prompts is not None and len(prompts) == 1 and n > 1:
            prompts = prompts * n
        cond = self._cond_kwargs(self.defaults.fps if self.kind == "video" else
                                 (0 if self.defaults.fps_cond else None), ratio)
        y, y_null = self._encode(prompts, negative_prompt, 1, guidance, cond)
        return prompts, y, y_null

    # ---- the three entry points -------------------------------------------------------------------------
    @torch.no_grad()
    def invert(self, image, prompt: str | Sequence[str] | None = None, *, negative_prompt=None,
               guidance: float | None = None) -> Inversion:
        """The exact noise of a picture (or video) under `prompt` and `guidance` (default: the pipeline's):
        one likelihood pass. `edit(..., inversion=...)` starts from it; sampling it under the same prompt,
        guidance and an exact sampler gives the picture back (in the flow's space)."""
        opts = self.defaults.sampling.with_(guidance=guidance)
        pixels, ratio = self._pixels(image)
        known = self._to_model(pixels)
        prompts, y, y_null = self._texts(prompt, negative_prompt, known.size(0), opts.guidance, ratio)
        z = encode(self.flow, known, y, y_null, opts.guidance)
        return Inversion(z, known, pixels, tuple(prompts) if prompts else None, opts.guidance, ratio)

    def _cached_inversion(self, image, prompt, negative_prompt, guidance) -> Inversion:
        """invert(), remembered for the last few (picture, prompt, guidance): repeated edits of one picture
        pay for its inversion once."""
        pixels, _ = self._pixels(image)
        key = (hashlib.sha1(pixels.detach().cpu().numpy().tobytes()).hexdigest(), str(prompt),
               str(negative_prompt), guidance)
        cache = self.__dict__.setdefault("_inversions", OrderedDict())
        if key not in cache:
            cache[key] = self.invert(pixels, prompt, negative_prompt=negative_prompt, guidance=guidance)
            while len(cache) > _KEEP:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    @torch.no_grad()
    def edit(self, prompt: str | Sequence[str] | None, image=None, *, source_prompt: str | Sequence[str] | None = None,
             strength: float = 0.5, mask_image=None, inversion: Inversion | None = None, negative_prompt=None,
             seed: int | None = 0, generator: torch.Generator | None = None, denoise: str | None = None,
             output_type: str = "pil", options: SamplerOptions | None = None, **sampling):
        """Change a picture towards `prompt`: its exact noise under `source_prompt` (the same prompt when not
        given), moved towards fresh noise by `strength` (0: the noise itself; 1: a new sample), sampled under
        `prompt`; with `mask_image` only the masked region changes. strength 0 with the source prompt gives the
        picture back (exact sampler, denoise='none')."""
        self._check_output_type(output_type)
        opts, denoise, _, _, _ = self._call_setup(options, sampling, denoise, None, None, None)
        g = self._generator(seed, generator)
        if inversion is None:
            if image is None:
                raise ValueError("give the picture to edit (image=...) or its inversion (inversion=...)")
            inversion = self._cached_inversion(image, source_prompt if source_prompt is not None else prompt,
                                               negative_prompt, opts.guidance)
        elif inversion.guidance != opts.guidance:
            raise ValueError(f"the inversion was made with guidance {inversion.guidance}; edit with the same "
                             f"guidance (or invert again)")
        z, known, pixels = inversion.z, inversion.known, inversion.pixels
        mask_px, mask = self._masks(mask_image if mask_image is not None else
                                    torch.ones(pixels.shape[-2:], dtype=torch.bool), pixels, known.shape)
        prompts, y, y_null = self._texts(prompt, negative_prompt, known.size(0), opts.guidance,
                                         inversion.aspect_ratio)
        from ..sampling.sample import sample
        x = sample(self.flow, edit_noise(z, strength, g, mask), y, y_null, opts)
        out = self._finish(x, y, denoise, mask, known, pixels, mask_px, output_type, opts.denoiser_precision)
        return self._outputs(out, prompts, output_type)

    @torch.no_grad()
    def inpaint(self, prompt: str | Sequence[str] | None, image, mask_image, *, negative_prompt=None,
                inpaint_method: str = "auto", iterations: int = 8, seed: int | None = 0,
                generator: torch.Generator | None = None, denoise: str | None = None, output_type: str = "pil",
                options: SamplerOptions | None = None, **sampling):
        """Fill the masked region of a picture (or of every frame of a video) under `prompt`; the rest is kept
        exactly (in pixels). inpaint_method: "auto" (exact through the caches where the known region is a prefix of the
        deep block's order, e.g. a video's first frames; else "resample"), "resample" (`iterations` rounds
        in the flow's noise space), "exact". An empty mask returns the picture, a full one is a new sample.
        Sampler settings (method="jacobi" / "sequential", guidance, ...) as in __call__."""
        self._check_output_type(output_type)
        if inpaint_method not in INPAINT_METHODS:
            raise ValueError(f"inpaint_method must be one of {', '.join(INPAINT_METHODS)}, not {inpaint_method!r}")
        opts, denoise, _, _, _ = self._call_setup(options, sampling, denoise, None, None, None)
        g = self._generator(seed, generator)
        pixels, ratio = self._pixels(image)
        known = self._to_model(pixels)
        mask_px, mask = self._masks(mask_image, pixels, known.shape)
        prompts, y, y_null = self._texts(prompt, negative_prompt, known.size(0), opts.guidance, ratio)
        if not bool(mask_px.any()):
            x = pixels if output_type != "latent" else known
            return self._outputs(x, prompts, output_type)
        x = inpaint(self.flow, known, mask, y, y_null, opts, method=inpaint_method, iterations=iterations,
                    generator=g)
        out = self._finish(x, y, denoise, mask, known, pixels, mask_px, output_type, opts.denoiser_precision)
        return self._outputs(out, prompts, output_type)
