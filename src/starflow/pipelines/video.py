"""Text-to-video, image-to-video and video-to-video, with a sliding window for videos longer than the trained
length."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .base import BasePipeline
from .image import convert_images

__all__ = ["StarFlowVideoPipeline", "VideoPipelineOutput"]


@dataclass
class VideoPipelineOutput:
    frames: Any          # list (per video) of lists of PIL frames | np (N, T, H, W, C) in [0, 1] |
                         # torch (N, T, C, H, W) in [0, 1] | latents (N, t, c, h, w)
    prompts: list[str] | None
    fps: int


class StarFlowVideoPipeline(BasePipeline):
    """Videos from prompts (and optionally a first frame) with a STARFlow-V model."""

    kind = "video"

    # ---- frames and windows -------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        """Pixel frames -> latent frames; a causal video autoencoder keeps frame 0 and packs the rest by `tf`."""
        tf = self.temporal_factor
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if (num_frames - 1) % tf:
            lo = (num_frames - 1) // tf * tf + 1
            raise ValueError(f"the autoencoder takes 1 + {tf}k frames; {num_frames} is not one "
                             f"(try {lo} or {lo + tf})")
        return (num_frames - 1) // tf + 1

    def trained_latent_frames(self) -> int | None:
        if self.config.local_attn_window:
            return self.config.local_attn_window
        n = self.defaults.num_frames
        return self.latent_frames(n) if n else None

    @contextlib.contextmanager
    def _window(self, frames: int, sampler: str):
        """The deep block's attention window in latent frames (None: whole video). Past the trained length the
        trained length becomes a sliding window (official `local_attn_window`, as its target_length sets it)."""
        c = self.config
        old = c.local_attn_window
        trained = self.trained_latent_frames()
        window = old or (trained if trained is not None and frames > trained else None)
        if window and frames > window:
            if not c.shallow_block_local:
                raise ValueError(f"this flow was trained on {window} latent frames and its shallow blocks see the "
                                 f"whole video (shallow_block_local=0): it cannot make {frames} latent frames")
            if sampler != "jacobi":
                raise ValueError("videos longer than the trained length need the sliding window of sampler='jacobi'")
        c.local_attn_window = window
        try:
            yield window
        finally:
            c.local_attn_window = old

    def _denoise_video(self, x: torch.Tensor, y: torch.Tensor | None, method: str, window: int | None) -> torch.Tensor:
        """Denoise in windows of the trained length; after the first window each step re-uses `overlap` frames
        (official: denoiser_window, or window - 1) as context and replaces only the new ones."""
        if method == "none" or self.defaults.noise_std <= 0:
            return x
        T = x.size(1)
        steps = window or T
        x = x.clone()
        s, overlap = 0, 0
        while True:
            out = self._denoise(x[:, s:s + steps].clone(), y, method)
            x[:, s + overlap:s + steps] = out[:, overlap:]
            if s + steps >= T:
                return x
            dw = self.config.denoiser_window
            overlap = min(steps - 1 if dw is None else dw, steps - 1)
            s += steps - overlap

    # ---- first frame --------------------------------------------------------------------------------
    def _first_frame(self, image, n: int, H: int, W: int, g: torch.Generator) -> torch.Tensor:
        """Image -> noised latent prefix (n, 1, c, h, w). Files / PIL images are resized and centre-cropped to
        the video size (as the official sampler does); tensors / arrays must already have that size."""
        from PIL import Image

        C = self.pixel_channels
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") or isinstance(image, Image.Image):
            from .io import load_image
            img = load_image(image).convert("L" if C == 1 else "RGB")
            scale = max(H / img.height, W / img.width)
            img = img.resize((max(W, int(img.width * scale)), max(H, int(img.height * scale))), Image.BILINEAR)
            left, top = (img.width - W) // 2, (img.height - H) // 2
            img = img.crop((left, top, left + W, top + H))
            arr = np.asarray(img, dtype=np.float32).reshape(H, W, C)
            x = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1                # (1, C, H, W) in [-1, 1]
        else:
            x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
            if x.dim() == 3:
                x = x[None]
            if x.dim() != 4 or tuple(x.shape[1:]) != (C, H, W):
                raise ValueError(f"image tensor of shape {tuple(x.shape)} does not fit the video: expected "
                                 f"({C}, {H}, {W}) or (B, {C}, {H}, {W}) in [-1, 1] (or pass a file / PIL image)")
        if x.size(0) not in (1, n):
            raise ValueError(f"{x.size(0)} first frames for {n} videos: give one, or one per video")
        x = x.to(self.device).expand(n, -1, -1, -1)
        # the posterior mean, not a draw: the same first frame gives the same prefix on any device
        z = self.autoencoder.encode(x, sample=False) if self.autoencoder is not None else x   # (n, c, h, w)
        noise = torch.randn(z.shape, generator=g).to(z.device)                             # CPU draw: reproducible
        z = z.float() + self.defaults.noise_std * noise                                    # training noise level
        return z[:, None].to(self.device, self.dtype)

    # ---- video to edit -----------------------------------------------------------------------------
    def _source_noise(self, source: torch.Tensor, prompts, per_prompt: int, source_prompt, guidance: float,
                      cond: dict, y_null: torch.Tensor | None, T: int) -> torch.Tensor:
        """The flow's noise of the video(s) to edit, one per output video (pipelines.video_edit)."""
        from .video_edit import invert_video, match_videos

        trained = self.trained_latent_frames()
        if trained is not None and T > trained:
            raise ValueError(f"the video to edit has {T} latent frames; video-to-video takes at most the trained "
                             f"{trained} (the inversion is one pass of the flow, without the sampling window)")
        videos, sources = match_videos(source, prompts, per_prompt, source_prompt)
        return invert_video(self, videos, sources, guidance if y_null is not None else 0.0, cond, y_null)

    # ---- call ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 *, num_videos_per_prompt: int = 1, num_frames: int | None = None, fps: int | None = None,
                 image=None, video=None, source_prompt: str | Sequence[str] | None = None,
                 guidance: float | None = None, sampler: str | None = None,
                 jacobi_block_size: int | None = None, jacobi_threshold: float | None = None,
                 jacobi_max_iter: int | None = None, jacobi_draft: str | None = None,
                 context_length: int | None = None,
                 height: int | None = None, width: int | None = None, aspect_ratio: str | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None, denoise: str | None = None,
                 output_type: str = "pil", batch_size: int | None = None, progress: bool = True,
                 num_videos: int | None = None) -> VideoPipelineOutput:
        """Generate videos; arguments as StarFlowPipeline, plus:

        num_frames: pixel frames (1 + temporal_factor * k); past the trained length the deep block samples
        with a sliding window re-encoding `context_length` latent frames (default window - 1).
        fps: written to the files, and given to the prompt template when the flow was trained with fps_cond.
        image: first frame (file, PIL image, or (C, H, W) / (B, C, H, W) tensor in [-1, 1]): image-to-video.
        video: a video to edit (GIF / MP4 file, uint8 (T, H, W, C), or (T, C, H, W) / (B, T, C, H, W) in [-1, 1]):
        video-to-video. The flow is inverted on it (one forward pass, under `source_prompt`, or the empty prompt
        when None) and its noise is sampled again under `prompt` (pipelines.video_edit). One video for all
        prompts or one per prompt; its frame count sets num_frames (at most the trained length).
        """
        self._check_output_type(output_type)
        c, d = self.config, self.defaults
        prompts = self._prompts(prompt, conditioned=c.txt_dim > 0)
        if num_videos_per_prompt < 1:
            raise ValueError("num_videos_per_prompt must be >= 1")
        source = None
        if video is not None:
            from .video_edit import read_source_video
            if image is not None:
                raise ValueError("give image= (image-to-video) or video= (video-to-video), not both")
            H0, W0 = self._call_setup(guidance, denoise, sampler, height, width, aspect_ratio)[-2:]
            source = read_source_video(video, self.pixel_channels, H0, W0)
            if num_frames is not None and num_frames != source.size(1):
                raise ValueError(f"num_frames={num_frames} but the video to edit has {source.size(1)} frames")
            num_frames = source.size(1)
        num_frames = d.num_frames if num_frames is None else num_frames
        if num_frames is None:
            raise ValueError("give num_frames (this pipeline has no trained length stored)")
        fps = int(fps or d.fps or 8)
        T = self.latent_frames(num_frames)
        guidance, denoise, sampler, aspect_ratio, H, W = self._call_setup(guidance, denoise, sampler, height, width,
                                                                          aspect_ratio)
        sf = self.spatial_factor
        n_total = len(prompts) * num_videos_per_prompt if prompts is not None else (num_videos or 1)
        if image is not None and T < 2:
            raise ValueError("image-to-video needs at least 2 latent frames to generate after the given one")

        cond = self._cond_kwargs(fps, aspect_ratio)
        y, y_null = self._encode(prompts, negative_prompt, num_videos_per_prompt, guidance, cond)
        g = self._generator(seed, generator)
        if source is not None:
            z = self._source_noise(source, prompts, num_videos_per_prompt, source_prompt, guidance, cond, y_null, T)
        else:
            z = torch.randn((n_total, T, self.latent_channels, H // sf, W // sf), generator=g)  # (N, T, C, h, w)
        z = z.to(self.device, self.dtype)
        prefix = self._first_frame(image, n_total, H, W, g) if image is not None else None

        from ..sampling.sample import sample
        bs = batch_size or n_total
        starts = range(0, n_total, bs)
        outs = []
        with self._window(T, sampler) as window:
            ctx = context_length or d.context_length or (window - 1 if window else None)
            if ctx is not None and window and not 0 < ctx < window:
                raise ValueError(f"context_length must be in [1, {window - 1}] for a window of {window} latent frames")
            opts = self._sampler_options(sampler, guidance, jacobi_block_size, jacobi_threshold, jacobi_max_iter,
                                         jacobi_draft, context_length=ctx)
            for s in tqdm(starts, desc="sampling", disable=not progress or len(starts) == 1):
                sl = slice(s, s + bs)
                yb = y[sl] if y is not None else None
                opts.progress = progress and len(starts) == 1
                x = sample(self.flow, z[sl], yb, y_null[sl] if y_null is not None else None, opts,
                           prefix=prefix[sl] if prefix is not None else None)
                x = self._denoise_video(x, yb, denoise, window)
                outs.append(x if output_type == "latent" else self._decode(x))
        x = torch.cat(outs)                                                       # (N, T', C, H, W)
        if output_type == "latent":
            frames = x
        else:
            N, Tp = x.shape[:2]
            flat = convert_images(x.flatten(0, 1), output_type)
            if output_type == "pil":
                frames = [flat[i * Tp:(i + 1) * Tp] for i in range(N)]
            else:
                frames = flat.reshape(N, Tp, *flat.shape[1:])
        per_video = [p for p in prompts for _ in range(num_videos_per_prompt)] if prompts is not None else None
        return VideoPipelineOutput(frames=frames, prompts=per_video, fps=fps)
