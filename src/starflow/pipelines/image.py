"""Text-to-image: prompts -> noise -> flow inverse (guided, Jacobi or sequential) -> denoise -> decode."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..sampling.options import SamplerOptions
from .base import BasePipeline
from .editing import EditingMixin
from ..data.media import to_uint8

__all__ = ["StarFlowPipeline", "ImagePipelineOutput", "convert_images"]


@dataclass
class ImagePipelineOutput:
    images: Any          # list of PIL images | np (N, H, W, C) in [0, 1] | torch (N, C, H, W) in [0, 1] | latents
    prompts: list[str] | None   # the prompt of each image (prompt-major: all images of prompt 0 first)


def convert_images(x: torch.Tensor, output_type: str):
    """Decoded pixels (N, C, H, W) in [-1, 1] -> the requested output type."""
    from PIL import Image

    # NaN (an overflowed sample, see sampling.sample) shows as black rather than as undefined bytes
    x01 = ((x.detach().float().nan_to_num(nan=-1.0).clamp(-1, 1) + 1) / 2).cpu()
    if output_type == "pt":
        return x01
    arr = x01.movedim(1, -1).numpy()                     # (N, H, W, C)
    if output_type == "np":
        return arr
    if arr.shape[-1] not in (1, 3):
        raise ValueError(f"output_type='pil' needs 1- or 3-channel pictures, these have {arr.shape[-1]}; "
                         "use output_type 'np', 'pt' or 'latent'")
    u8 = to_uint8(x)                                     # (N, H, W, C): the rule of the files we write
    return [Image.fromarray(a[..., 0], "L") if a.shape[-1] == 1 else Image.fromarray(a, "RGB") for a in u8]


class StarFlowPipeline(EditingMixin, BasePipeline):
    """Images from prompts with a STARFlow model.

    >>> pipe = StarFlowPipeline.from_pretrained("runs/digits_pipeline")
    >>> out = pipe(["a handwritten digit three"], num_images_per_prompt=4, guidance=2.0, seed=0)
    >>> out.images[0].save("three.png")
    """

    kind = "image"

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 *, num_images_per_prompt: int = 1, height: int | None = None, width: int | None = None,
                 aspect_ratio: str | None = None, generator: torch.Generator | None = None, seed: int | None = None,
                 denoise: str | None = None, output_type: str = "pil", batch_size: int | None = None,
                 progress: bool = True, num_images: int | None = None, options: SamplerOptions | None = None,
                 **sampling) -> ImagePipelineOutput:
        """Generate `num_images_per_prompt` images for each prompt.

        Sampler settings: `options` (a SamplerOptions; default: the pipeline's `defaults.sampling`) and/or
        its fields as keyword arguments: guidance (classifier-free guidance weight, official `cfg`; 0 turns
        it off), method ("jacobi": parallel, with jacobi_block_size / jacobi_th / jacobi_max_iter /
        jacobi_draft; or "sequential"), attn_temp, ... negative_prompt replaces the empty prompt of the
        unconditional branch. Size: height/width in pixels, or an aspect ratio ("16:9"...) keeping the
        trained area. denoise: "score" (the flow's own gradient), "learned" (the learnable denoiser) or
        "none". output_type: "pil", "np" / "pt" (in [0, 1]) or "latent" (the flow's space, before decoding).
        seed / generator: a seed gives the same images on any device; noise is drawn for all images first, so
        batch_size changes nothing but Jacobi's early stop (decided per batch, within jacobi_th).
        num_images: for unconditional models (no prompt), how many images.
        """
        self._check_output_type(output_type)
        c = self.config
        prompts = self._prompts(prompt, conditioned=c.txt_dim > 0)
        if num_images_per_prompt < 1 or (num_images is not None and num_images < 1):
            raise ValueError("num_images_per_prompt and num_images must be >= 1")
        opts, denoise, aspect_ratio, H, W = self._call_setup(options, sampling, denoise, height, width, aspect_ratio)
        sf = self.spatial_factor
        n_total = len(prompts) * num_images_per_prompt if prompts is not None else (num_images or 1)

        # a video model trained with fps conditioning makes images under the "fps 0" template
        cond = self._cond_kwargs(0 if self.defaults.fps_cond else None, aspect_ratio)
        y, y_null = self._encode(prompts, negative_prompt, num_images_per_prompt, opts.guidance, cond)
        g = self._generator(seed, generator)
        z = torch.randn((n_total, self.latent_channels, H // sf, W // sf), generator=g)   # (N, C, h, w)
        z = z.to(self.device, self.dtype)

        x = self._run_batches(z, y, y_null, opts, batch_size=batch_size, progress=progress, output_type=output_type,
                              denoise=lambda x, yb: self._denoise(x, yb, denoise, opts.denoiser_precision))
        images = x if output_type == "latent" else convert_images(x, output_type)
        per_image = [p for p in prompts for _ in range(num_images_per_prompt)] if prompts is not None else None
        return ImagePipelineOutput(images=images, prompts=per_image)
