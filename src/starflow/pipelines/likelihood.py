"""Exact likelihood of a picture under a pipeline: bits/dim through the flow, for an image file or PIL image.

How the picture reaches the flow (what the figure is a density of):
- pixel space (no autoencoder): 8-bit values v -> x = v / 127.5 - 1 in [-1, 1], the official normalisation
  (for a model trained on dequantised data, `dequantized=True`: bin centres (v + 0.5) / 128 - 1); a fixed
  input transform the model was trained behind (logit, Gaussianize) is applied with its log-Jacobian, so the
  figure stays that of x. Besides bits/dim of x, `bits_per_dim_8bit` counts bits per 8-bit value:
  -log2 p(v) ~= -log2 p(x) - D log2(scale), with scale = dx/dv (2/255, or 2/256 dequantised).
- latent space: x as above, then the autoencoder's posterior mean (not a draw: the same picture gives the same
  figure). Bits/dim are then per latent dimension (c * h * w), not comparable with pixel figures.
- video pipelines score the picture as a one-frame video (the first frame of a causal video model).

The density is evaluated at the picture as it is: a model trained on noisy inputs (`noise_std`) gives the
density of its noisy training distribution there, and no dequantisation noise is averaged over.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..flow.likelihood import nll

__all__ = ["ImageLikelihood", "image_likelihood", "expected_image_size"]

LN2 = math.log(2)


@dataclass
class ImageLikelihood:
    bits_per_dim: float                   # -log2 p(model input | prompt) / D, in the flow's input space
    bits_per_dim_unconditional: float | None   # same with the empty prompt (None: no prompt given / no text)
    bits_per_dim_8bit: float | None       # pixel space: bits per 8-bit value; None in latent space
    nll_nats: float                       # -log p(model input | prompt), nats
    num_dims: int                         # D: values scored (pixels x channels, or latent dimensions)
    space: str                            # "pixels" or "latents"
    input_shape: tuple[int, ...]          # the flow's input, one sample
    size: tuple[int, int]                 # (height, width) of the picture scored, in pixels
    mapping: str                          # one sentence: how the picture was mapped to the flow's input
    prompt: str | None


def expected_image_size(pipe) -> tuple[int, int]:
    """(height, width) in pixels of the pictures the flow was trained on (the default aspect ratio's)."""
    return _size(pipe, pipe.defaults.aspect_ratio)


def _size(pipe, ratio: str | None) -> tuple[int, int]:
    from .spec import aspect_ratio_to_size

    multiple = pipe.spatial_factor * pipe.config.patch_size
    return aspect_ratio_to_size(pipe.config.img_size * pipe.spatial_factor, ratio, multiple)


def _fit(img, pipe, resize: bool):
    """Check (or, with resize, bring) the picture to a size the model makes: the trained one, or with rotary
    positions one of the aspect ratios of the same area (a far larger picture would be scored as a texture of
    a size the model never saw)."""
    from PIL import Image

    from .spec import ASPECT_RATIOS

    H, W = expected_image_size(pipe)
    if (img.height, img.width) == (H, W):
        return img
    if resize:
        scale = max(H / img.height, W / img.width)
        img = img.resize((max(W, round(img.width * scale)), max(H, round(img.height * scale))), Image.BILINEAR)
        left, top = (img.width - W) // 2, (img.height - H) // 2
        return img.crop((left, top, left + W, top + H))
    others = {_size(pipe, r) for r in ASPECT_RATIOS} - {(H, W)} if pipe.config.rope else set()
    if (img.height, img.width) in others:
        return img
    also = (" (or " + ", ".join(f"{w}x{h}" for h, w in sorted(others)) + " for other aspect ratios)") if others else ""
    raise ValueError(f"the image is {img.width}x{img.height} pixels; this model scores {W}x{H} images{also}: "
                     "resize it first, or ask for resizing and centre-cropping")


def _pixels(img, pipe, dequantized: bool) -> tuple[torch.Tensor, float, str]:
    """PIL image -> (x (1, C, H, W) in [-1, 1], dx/dv, description)."""
    C = pipe.pixel_channels
    if C not in (1, 3):
        raise ValueError(f"this model's pictures have {C} channels: only 1 (grey) or 3 (RGB) can be read from images")
    mode = "L" if C == 1 else "RGB"
    note = "" if img.mode == mode else f" (converted from {img.mode} to {mode})"
    v = torch.from_numpy(np.asarray(img.convert(mode), dtype=np.float32).reshape(img.height, img.width, C))
    v = v.permute(2, 0, 1)[None]                                           # (1, C, H, W), 0..255
    if pipe.autoencoder is None and dequantized:
        return (v + 0.5) * (2 / 256) - 1, 2 / 256, f"8-bit pixels to bin centres (v + 0.5) / 128 - 1{note}"
    return v / 127.5 - 1, 2 / 255, f"8-bit pixels to v / 127.5 - 1 in [-1, 1]{note}"


@torch.no_grad()
def image_likelihood(pipe, image, prompt: str | None = None, *, resize: bool = False,
                     dequantized: bool = False) -> ImageLikelihood:
    """Exact -log p(picture | prompt) through the pipeline's flow, as bits/dim (see the module docstring).

    image: a file path or PIL image. prompt: None scores under the empty prompt (the unconditional branch
    learned with caption dropout); with a prompt, the unconditional figure is given too. resize: bring a
    picture of another size to the trained one (bilinear, centre crop); otherwise a wrong size is an error.
    dequantized: the flow was trained on uniformly dequantised pixels (the training config's `data.dequantize`,
    which a pipeline does not carry): pixels go to bin centres."""
    from ..data.media import load_image

    c = pipe.config
    if prompt is not None and c.txt_dim == 0:
        raise ValueError("this model is unconditional: it takes no prompt")
    img = _fit(load_image(image), pipe, resize)
    x, scale, mapping = _pixels(img, pipe, dequantized)
    video = pipe.kind == "video"
    if video:
        x = x[:, None]                                                    # (1, 1, C, H, W): a one-frame video
    space = "pixels" if pipe.autoencoder is None else "latents"
    if pipe.autoencoder is not None:
        x = pipe.autoencoder.encode(x.to(pipe.device), sample=False).float()
        mapping += ", then the autoencoder's posterior mean (latents)"
    logdet = torch.zeros(1, dtype=torch.float64)
    if pipe.input_transform is not None:
        x, ld = pipe.input_transform.forward(x)
        logdet = ld.double().cpu()
        mapping += f", then the model's {pipe.input_transform.kind} input transform (its log-Jacobian counted)"
    if video:
        mapping += "; scored as a one-frame video"
    x = x.to(pipe.device, pipe.dtype)
    D = x[0].numel()

    def nats(p: str | None) -> float:
        y = None
        if c.txt_dim > 0:
            d = pipe.defaults
            fps = int(d.fps or 8) if video else 0
            # the template fields the flow was trained with (fps, noise level, aspect ratio)
            cond = pipe._cond_kwargs(fps, d.aspect_ratio)
            enc = pipe.text_encoder
            y = (enc.null(1, **cond) if p is None else enc.encode([p], **cond)).to(pipe.device, pipe.dtype)
        return float(nll(pipe.flow, x, y).double().cpu() - logdet)

    n = nats(prompt)
    uncond = nats(None) / (D * LN2) if prompt is not None else None
    bpd = n / (D * LN2)
    bpd8 = bpd - math.log2(scale) if space == "pixels" else None
    return ImageLikelihood(bits_per_dim=bpd, bits_per_dim_unconditional=uncond, bits_per_dim_8bit=bpd8,
                           nll_nats=n, num_dims=D, space=space, input_shape=tuple(x.shape[1:]),
                           size=(img.height, img.width), mapping=mapping, prompt=prompt)
