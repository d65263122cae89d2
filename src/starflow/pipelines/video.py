"""Text-to-video, image-to-video and video-to-video, with a sliding window for videos longer than the trained
length."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..sampling.options import SamplerOptions
from .base import BasePipeline
from .editing import EditingMixin
from .image import convert_images

__all__ = ["StarFlowVideoPipeline", "VideoPipelineOutput"]


@dataclass
class VideoPipelineOutput:
    frames: Any          # list (per video) of lists of PIL frames | np (N, T, H, W, C) in [0, 1] |
                         # torch (N, T, C, H, W) in [0, 1] | latents (N, t, c, h, w)
    prompts: list[str] | None
    fps: int


class StarFlowVideoPipeline(EditingMixin, BasePipeline):
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

    def _window(self, frames: int) -> int | None:
        """The deep block's attention window in latent frames (None: the whole video). Past the trained length
        the trained length becomes a sliding window (official `local_attn_window`, as its target_length sets
        it), for both samplers; the sampler gets it as a setting, the model's config is never changed."""
        c = self.config
        trained = self.trained_latent_frames()
        window = c.local_attn_window or (trained if trained is not None and frames > trained else None)
        if window and frames > window and not c.shallow_block_local:
            raise ValueError(f"this flow was trained on {window} latent frames and its shallow blocks see the "
                             f"whole video (shallow_block_local=False): it cannot make {frames} latent frames")
        return window

    def _denoise_video(self, x: torch.Tensor, y: torch.Tensor | None, method: str, window: int | None,
                       precision: str = "model") -> torch.Tensor:
        """Denoise in windows of the trained length; after the first window each step re-uses `overlap` frames
        (official: denoiser_window, or window - 1) as context and replaces only the new ones. precision: the
        learned denoiser's (SamplerOptions.denoiser_precision)."""
        from ..sampling.denoise import in_windows, learned_denoise_video

        if method == "none" or self.defaults.noise_std <= 0:
            return x
        if method == "learned":
            return learned_denoise_video(self.flow, x, y, self.defaults.noise_std, window, precision)
        return in_windows(lambda chunk, new: self._denoise(chunk, y, method), x, window, self.config.denoiser_window)

    # ---- first frame --------------------------------------------------------------------------------
    def _first_frame(self, image, n: int, H: int, W: int, g: torch.Generator) -> torch.Tensor:
        """Image -> noised latent prefix (n, 1, c, h, w). Files / PIL images are resized and centre-cropped to
        the video size (as the official sampler does); tensors / arrays must already have that size."""
        from PIL import Image

        C = self.pixel_channels
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") or isinstance(image, Image.Image):
            from ..data.media import load_image
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
        with self._use(self.autoencoder) as ae:          # (n, c, h, w)
            z = ae.encode(x, sample=False) if ae is not None else x
        noise = torch.randn(z.shape, generator=g).to(z.device)                             # CPU draw: reproducible
        z = z.float() + self.defaults.noise_std * noise                                    # training noise level
        return z[:, None].to(self.device, self.dtype)

    # ---- video to video -------------------------------------------------------------------------------
    def _video_to_video(self, prompt, video, source_prompt, *, num_videos_per_prompt: int, num_frames: int | None,
                        image, **edit_kwargs) -> VideoPipelineOutput:
        """The flow inverted on `video` (exact, one likelihood pass, under `source_prompt`: the empty prompt
        when None) and its noise sampled again under `prompt`: `edit(..., strength=0)`. What the noise carries
        and the prompt does not decide is kept (in the moving digits: where the digit is and how it moves)."""
        if image is not None:
            raise ValueError("give image= (image-to-video) or video= (video-to-video), not both")
        if num_videos_per_prompt != 1:
            raise ValueError("video-to-video makes one edit per video: give one prompt per video "
                             "(num_videos_per_prompt=1)")
        pixels, _ = self._pixels(video)
        frames = pixels.size(1)
        if num_frames is not None and num_frames != frames:
            raise ValueError(f"num_frames={num_frames}, but the video to edit has {frames} frames")
        T, trained = self.latent_frames(frames), self.trained_latent_frames()
        if trained is not None and T > trained:
            raise ValueError(f"the video to edit has {frames} frames ({T} latent); video-to-video takes at most "
                             f"the trained length ({trained} latent frames): the inversion is one pass of the flow, "
                             f"which has no sliding window")
        if source_prompt is None and self.config.txt_dim > 0:
            source_prompt = ""
        return self.edit(prompt, pixels, source_prompt=source_prompt, strength=0.0, **edit_kwargs)

    # ---- call ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 *, num_videos_per_prompt: int = 1, num_frames: int | None = None, fps: int | None = None,
                 image=None, video=None, source_prompt: str | Sequence[str] | None = None,
                 height: int | None = None, width: int | None = None, aspect_ratio: str | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None, denoise: str | None = None,
                 output_type: str = "pil", batch_size: int | None = None, progress: bool = True,
                 num_videos: int | None = None, options: SamplerOptions | None = None, **sampling
                 ) -> VideoPipelineOutput:
        """Generate videos; arguments as StarFlowPipeline, plus:

        num_frames: pixel frames (1 + temporal_factor * k); past the trained length the deep block samples
        with a sliding window re-encoding `context_length` latent frames (official default 16). num_frames=1
        makes an image, as the official `--target_length 1` does: image noise, the "An image:" prompt template
        (fps 0) when the model was trained with fps conditioning; the output has one frame.
        fps: written to the files, and given to the prompt template when the flow was trained with fps_cond.
        image: first frame (file, PIL image, or (C, H, W) / (B, C, H, W) tensor in [-1, 1]): image-to-video.
        video: a video to edit (GIF / MP4 file, or (T, C, H, W) / (B, T, C, H, W) in [-1, 1], the model's frame
        size, at most the trained length): video-to-video. The flow is inverted on it under `source_prompt`
        (default: the empty prompt) and its noise sampled again under `prompt`, one prompt (or one per video).
        """
        if video is not None:
            return self._video_to_video(prompt, video, source_prompt, num_videos_per_prompt=num_videos_per_prompt,
                                        num_frames=num_frames, image=image, negative_prompt=negative_prompt,
                                        seed=seed, generator=generator, denoise=denoise, output_type=output_type,
                                        options=options, **sampling)
        if source_prompt is not None:
            raise ValueError("source_prompt goes with video= (the prompt the video to edit was made with)")
        self._check_output_type(output_type)
        c, d = self.config, self.defaults
        prompts = self._prompts(prompt, conditioned=c.txt_dim > 0)
        if num_videos_per_prompt < 1 or (num_videos is not None and num_videos < 1):
            raise ValueError("num_videos_per_prompt and num_videos must be >= 1")
        num_frames = d.num_frames if num_frames is None else num_frames
        if num_frames is None:
            raise ValueError("give num_frames (this pipeline has no trained length stored)")
        if fps is not None and not fps >= 1:     # 0 is an error, not the default (None is)
            raise ValueError(f"fps must be >= 1, got {fps}")
        fps = int(fps if fps is not None else (d.fps or 8))
        T = self.latent_frames(num_frames)
        still = num_frames == 1
        opts, denoise, aspect_ratio, H, W = self._call_setup(options, sampling, denoise, height, width, aspect_ratio)
        sf = self.spatial_factor
        n_total = len(prompts) * num_videos_per_prompt if prompts is not None else (num_videos or 1)
        if image is not None and T < 2:
            raise ValueError("image-to-video needs at least 2 latent frames to generate after the given one")

        cond = self._cond_kwargs(0 if still else fps, aspect_ratio)           # fps 0: "An image:"
        y, y_null = self._encode(prompts, negative_prompt, num_videos_per_prompt, opts.guidance, cond)
        g = self._generator(seed, generator)
        frame_shape = (self.latent_channels, H // sf, W // sf)
        z = torch.randn((n_total, *frame_shape) if still else (n_total, T, *frame_shape), generator=g)
        z = z.to(self.device, self.dtype)                  # (N, c, h, w) for an image, else (N, T, c, h, w)
        prefix = self._first_frame(image, n_total, H, W, g) if image is not None else None

        if still:    # the model's image mode (its positions of an image, not of a one-frame video)
            x = self._run_batches(z, y, y_null, opts, batch_size=batch_size, progress=progress,
                                  output_type=output_type,
                                  denoise=lambda x, yb: self._denoise(x, yb, denoise, opts.denoiser_precision))
            x = x[:, None]
        else:
            window = self._window(T)
            if window:   # the sampler checks the context against the window
                opts = opts.with_(attn_window=window, context_length=opts.context_length or window - 1)
            x = self._run_batches(z, y, y_null, opts, batch_size=batch_size, progress=progress,
                                  output_type=output_type,
                                  denoise=lambda x, yb: self._denoise_video(x, yb, denoise, window,
                                                                            opts.denoiser_precision),
                                  prefix=prefix)
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
