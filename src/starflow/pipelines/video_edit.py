"""Video-to-video for StarFlowVideoPipeline: invert the flow on a given video, sample again under a new prompt.

A normalizing flow maps a video to its noise exactly, in one forward pass: z = f(x | source prompt). Sampling
from that z under another prompt keeps what z carries that the prompt does not decide (in the moving digits:
where the digit is and how it moves) and lets the new prompt decide the rest (which digit). With the same
prompt, the same guidance and no denoising, the inverse gives the source video back (to float precision),
which is how the inversion is tested. The inversion uses the sampler's guidance: the guided forward
(`StarFlow.forward(..., guidance=w)` on [cond; uncond]) is the exact inverse of the guided sampler.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["read_source_video", "match_videos", "invert_video"]


def _gif_frames(path: Path) -> list[np.ndarray]:
    """GIF writers merge identical consecutive frames into one of a longer duration (Pillow does): each frame
    is repeated duration / shortest duration times to get the video's frames back."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames, durations = [], []
        for f in ImageSequence.Iterator(im):
            frames.append(np.asarray(f.convert("RGB")))
            durations.append(int(f.info.get("duration") or 0))
    base = min((d for d in durations if d > 0), default=0)
    if base:
        frames = [f for f, d in zip(frames, durations) for _ in range(max(1, round(d / base)))]
    return frames


def _from_file(path: Path) -> np.ndarray:
    """A GIF / MP4 (any format imageio reads) -> uint8 (T, H, W, C)."""
    import imageio.v3 as iio

    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        if path.suffix.lower() == ".gif":
            frames = _gif_frames(path)
        else:
            frames = [np.asarray(f) for f in iio.imiter(path, plugin="pyav")]
    except Exception as e:   # not a video, truncated, unknown codec
        raise ValueError(f"cannot read video {path}: {e}") from e
    if not frames:
        raise ValueError(f"cannot read video {path}: it has no frames")
    frames = [f[..., None] if f.ndim == 2 else f[..., :3] for f in frames]
    return np.stack(frames)


def read_source_video(video, channels: int, height: int, width: int) -> torch.Tensor:
    """A video to edit -> (B, T, C, H, W) float in [-1, 1].

    `video`: a file (GIF, MP4), uint8 frames (T, H, W, C), or floats in [-1, 1] as (T, C, H, W) / (B, T, C, H, W).
    Files must have the pipeline's frame size, or an integer multiple of it (files written with `--scale`,
    which repeats pixels: they are averaged back); colour is averaged to grey for a one-channel model."""
    if isinstance(video, (str, bytes)) or hasattr(video, "__fspath__"):
        arr = _from_file(Path(video))
        x = torch.from_numpy(arr).float().permute(0, 3, 1, 2)[None] / 127.5 - 1          # (1, T, C', H', W')
        what = f"video {video}"
    elif isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4:
            raise ValueError(f"uint8 frames must be (T, H, W, C), got shape {video.shape}")
        x = torch.from_numpy(video).float().permute(0, 3, 1, 2)[None] / 127.5 - 1
        what = "the video"
    else:
        x = torch.as_tensor(video).float()
        if x.dim() == 4:
            x = x[None]
        if x.dim() != 5:
            raise ValueError(f"video tensor of shape {tuple(x.shape)}: expected (T, C, H, W) or (B, T, C, H, W) in "
                             f"[-1, 1] (or a file, or uint8 frames (T, H, W, C))")
        if x.size(2) != channels or x.shape[-2:] != (height, width):
            raise ValueError(f"video tensor of shape {tuple(x.shape)} does not fit the model: expected frames of "
                             f"({channels}, {height}, {width})")
        return x
    if x.size(2) != channels:
        x = x.mean(2, keepdim=True) if channels == 1 else x.expand(-1, -1, channels, -1, -1) if x.size(2) == 1 else x
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        f = h // height
        if h % height or w % width or w // width != f:
            raise ValueError(f"{what} is {w}x{h} pixels; this model makes {width}x{height} videos (or a file "
                             f"written at an integer scale of that)")
        x = F.avg_pool2d(x.flatten(0, 1), f).reshape(*x.shape[:3], height, width)
    if x.size(2) != channels:
        raise ValueError(f"{what} has {x.size(2)} channels; the model makes {channels}")
    return x


def match_videos(videos: torch.Tensor, prompts: list[str] | None, per_prompt: int,
                 source_prompt: str | Sequence[str] | None) -> tuple[torch.Tensor, list[str] | None]:
    """One source video per output, and the prompt each source is inverted under.

    One video for all prompts, or one per prompt (each repeated `per_prompt` times); source_prompt: None (the
    empty prompt), one for all, or one per video."""
    B = videos.size(0)
    n = len(prompts) if prompts is not None else 1
    if B not in (1, n):
        raise ValueError(f"{B} videos for {n} prompts: give one video, or one per prompt")
    if source_prompt is None:
        sources = None
    else:
        sources = [source_prompt] if isinstance(source_prompt, str) else list(source_prompt)
        if not all(isinstance(s, str) for s in sources):
            raise ValueError("source prompts must be strings")
        if len(sources) not in (1, B):
            raise ValueError(f"{len(sources)} source prompts for {B} videos: give one, or one per video")
        sources = sources * B if len(sources) == 1 else sources
    idx = torch.zeros(n * per_prompt, dtype=torch.long) if B == 1 else torch.arange(B).repeat_interleave(per_prompt)
    out_sources = [sources[i] for i in idx.tolist()] if sources is not None else None
    return videos[idx], out_sources


@torch.no_grad()
def invert_video(pipe, videos: torch.Tensor, sources: list[str] | None, guidance: float, cond: dict,
                 y_null: torch.Tensor | None) -> torch.Tensor:
    """Pixels (N, T, C, H, W) in [-1, 1] -> the flow's noise z (N, t, c, h, w) under the source prompts (or the
    empty prompt), with the sampler's guidance when > 0 (y_null: the unconditional embeddings it uses)."""
    flow = pipe.flow
    x = videos.to(pipe.device)
    if pipe.autoencoder is not None:
        # the posterior mean: a video gives one z, on any device
        x = pipe.autoencoder.encode(x, sample=False)
    x = x.to(pipe.device, pipe.dtype)
    if pipe.input_transform is not None:
        x, _ = pipe.input_transform.forward(x)
    y = None
    if pipe.config.txt_dim > 0:
        enc = pipe.text_encoder
        y = (enc.encode(sources, **cond) if sources is not None else enc.null(len(x), **cond)).to(pipe.device,
                                                                                                 pipe.dtype)
    if guidance > 0 and y is not None:
        if not pipe.config.cond_top_only and sum(getattr(b, "conditioned", False) for b in flow.blocks) > 1:
            # the sampler guides every conditioned block, the guided forward only the deep one
            raise ValueError("video-to-video with guidance needs a flow whose deep block alone reads the text "
                             "(cond_top_only); use guidance=0 with this one")
        out = flow(torch.cat([x, x]), torch.cat([y, y_null]), guidance=guidance).z
        return out[:len(x)]
    return flow(x, y).z
