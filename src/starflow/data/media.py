"""Writing what the pipelines produce: PNG grids, GIF and MP4 videos (video grids too), and reading images.

Everything here takes pixels either as float tensors/arrays in [-1, 1] laid out like the models
((N, C, H, W) images, (N, T, C, H, W) videos) or as uint8 arrays laid out like files ((H, W, C) /
(T, H, W, C)).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..outputs import atomic_file

__all__ = ["to_uint8", "make_grid", "video_grid", "save_image", "save_image_grid", "save_video", "load_image",
           "load_video", "eight_bit", "VIDEO_SUFFIXES", "IMAGE_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] floats (..., C, H, W) -> uint8 (..., H, W, C); uint8 input is returned as is."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x
    t = torch.as_tensor(x).detach().float().cpu()
    if t.dim() < 3:
        raise ValueError(f"expected (..., C, H, W) pixels, got shape {tuple(t.shape)}")
    t = ((t.nan_to_num(nan=-1.0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)   # NaN: black
    return t.movedim(-3, -1).numpy()


def _grid_shape(n: int, nrow: int | None) -> tuple[int, int]:
    """(rows, columns). `nrow` is the number of images per row, as in torchvision."""
    cols = nrow if nrow else math.ceil(math.sqrt(n))
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def make_grid(images: torch.Tensor | np.ndarray | Sequence[np.ndarray], nrow: int | None = None,
              padding: int = 2, pad_value: int = 0, scale: int = 1) -> np.ndarray:
    """Tile N images into one uint8 (H', W', C) array, `nrow` images per row (default: near square).

    scale: integer nearest-neighbour enlargement, for tiny images such as 8x8 digits."""
    arr = to_uint8(images) if not isinstance(images, (list, tuple)) else np.stack([to_uint8(i) for i in images])
    if arr.ndim != 4:
        raise ValueError(f"make_grid needs N images, got an array of shape {arr.shape}")
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = arr.shape
    rows, cols = _grid_shape(n, nrow)
    out = np.full((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), pad_value, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y0, x0 = padding + r * (h + padding), padding + k * (w + padding)
        out[y0:y0 + h, x0:x0 + w] = arr[i]
    return out


def video_grid(videos: torch.Tensor | np.ndarray, nrow: int | None = None, padding: int = 2,
               scale: int = 1) -> np.ndarray:
    """(N, T, C, H, W) in [-1, 1] (or uint8 (N, T, H, W, C)) -> uint8 frames (T, H', W', C) of a tiled grid."""
    arr = to_uint8(videos)
    if arr.ndim != 5:
        raise ValueError(f"video_grid needs (N, T, C, H, W) videos, got shape {tuple(arr.shape)}")
    return np.stack([make_grid(arr[:, t], nrow, padding, scale=scale) for t in range(arr.shape[1])])


def _pil(arr: np.ndarray) -> Image.Image:
    if arr.shape[-1] == 1:
        return Image.fromarray(arr[..., 0], mode="L")
    if arr.shape[-1] == 3:
        return Image.fromarray(arr, mode="RGB")
    raise ValueError(f"cannot write an image with {arr.shape[-1]} channels (1 or 3 expected)")


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise ValueError(f"cannot write {what} to {path}: use one of {', '.join(allowed)}")


def save_image(image: torch.Tensor | np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """One image, (C, H, W) in [-1, 1] or uint8 (H, W, C)."""
    path = Path(path)
    _check_suffix(path, IMAGE_SUFFIXES, "an image")
    arr = to_uint8(image)
    if scale > 1:
        arr = arr.repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:   # a kill or a full disk never leaves half a picture
        _pil(arr).save(tmp)
    return path


def save_image_grid(images, path: str | Path, nrow: int | None = None, padding: int = 2, scale: int = 1) -> Path:
    """N images as one grid image (PNG by suffix); nrow images per row."""
    return save_image(make_grid(images, nrow, padding, scale=scale), path)


def save_video(frames: torch.Tensor | np.ndarray, path: str | Path, fps: float = 8, nrow: int | None = None,
               scale: int = 1) -> Path:
    """Write frames as .gif or .mp4 (H.264, yuv420p).

    frames: uint8 (T, H, W, C), or floats in [-1, 1] as (T, C, H, W) for one video or (N, T, C, H, W)
    for several, which are tiled into a grid (nrow videos per row)."""
    path = Path(path)
    _check_suffix(path, VIDEO_SUFFIXES, "a video")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        arr = frames
    else:
        t = torch.as_tensor(frames)
        arr = video_grid(t, nrow) if t.dim() == 5 else to_uint8(t)
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"a video needs frames (T, H, W, C), got shape {arr.shape}")
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:   # a kill or a full disk never leaves half a video
        if path.suffix.lower() == ".gif":
            imgs = [_pil(f) for f in arr]
            # GIF stores frame durations in milliseconds; loop=0 repeats forever
            imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=max(1, round(1000 / fps)), loop=0)
        else:
            _write_mp4(arr, tmp, fps)
    return path


def _write_mp4(arr: np.ndarray, path: Path, fps: float) -> None:
    import av
    from fractions import Fraction

    if arr.shape[-1] == 1:
        arr = arr.repeat(3, axis=-1)
    # yuv420p halves the chroma resolution: H.264 needs even sides, so replicate the last row/column
    T, H, W, _ = arr.shape
    arr = np.pad(arr, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}   # near lossless, as the official sampler writes
        for f in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def eight_bit(img: Image.Image) -> Image.Image:
    """`img` with 8 bits per channel. Pillow opens a 16-bit grey PNG as mode I;16 (or I), and its `convert`
    clips such pixels to 255 (a white picture); here they are scaled, v * 255 / 65535 rounded, to the 8-bit
    levels everything downstream uses. (16-bit colour PNGs Pillow itself reads as 8-bit RGB, by the high byte.)
    Pixels that are not 8- or 16-bit integers (32-bit integers, floats) are refused."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ValueError(f"{img.mode} pixels span {int(a.min())}..{int(a.max())}: only 8- and 16-bit images "
                             f"are read")
        return Image.fromarray(np.round(a.astype(np.float64) * (255 / 65535)).astype(np.uint8), "L")
    if img.mode == "F":
        raise ValueError("floating-point pixels (mode F) are not read: save the picture with 8 or 16 bits per channel")
    return img


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """Open an image file (or pass a PIL image through), with 8 bits per channel (see `eight_bit`)."""
    if isinstance(image, Image.Image):
        return eight_bit(image)
    path = Path(image)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
        return eight_bit(img)
    except Exception as e:  # truncated or not an image
        raise ValueError(f"cannot read image {path}: {e}") from e


def _gif_frames(path: Path) -> list[np.ndarray]:
    """A GIF's frames. GIF writers (Pillow's among them) merge identical consecutive frames into one frame of a
    longer duration: each frame is repeated duration / shortest duration times to give the video back."""
    from PIL import ImageSequence

    with Image.open(path) as im:
        frames, durations = [], []
        for f in ImageSequence.Iterator(im):
            frames.append(np.asarray(f.convert("L" if f.mode in ("L", "LA", "1", "I", "I;16") else "RGB")))
            durations.append(int(f.info.get("duration") or 0))
    base = min((d for d in durations if d > 0), default=0)
    if base:
        frames = [f for f, d in zip(frames, durations) for _ in range(max(1, round(d / base)))]
    return frames


def load_video(path: str | Path) -> np.ndarray:
    """A GIF / MP4 (any format imageio reads) -> uint8 frames (T, H, W, C), C 1 (grey) or 3."""
    import imageio.v3 as iio

    path = Path(path)
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
    return np.stack([f[..., None] if f.ndim == 2 else f[..., :3] for f in frames])
