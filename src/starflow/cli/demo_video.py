"""The video half of `starflow demo`: score the moving-digits model with the frame reader
(evaluation.video_eval) and write what a person looks at, as GIF and MP4, every video labelled:
- moving_digit: one text-to-video sample per prompt, a row per digit, a column per direction;
- moving_digit_continued: image-to-video, held-out first frames: the real video | the model's continuation;
- moving_digit_long: videos `long_factor` times the trained length (the sliding window);
- moving_digit_edited: video-to-video, the source | the same motion with another digit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.moving_digits import DIRECTIONS

__all__ = ["labelled_video_grid", "video_part", "short_label"]

LABEL_H = 13          # pixels of text under each tile


def short_label(prompt: str) -> str:
    """'a handwritten digit seven moving left' -> 'seven left' (class indices stay as they are)."""
    words = prompt.split()
    if len(words) == 6 and words[:3] == ["a", "handwritten", "digit"] and words[4] == "moving":
        return f"{words[3]} {words[5]}"
    return prompt


def labelled_video_grid(videos, labels: list[str], nrow: int, scale: int = 4, pad: int = 3) -> np.ndarray:
    """(N, T, C, H, W) in [-1, 1] -> uint8 frames (T, H', W', 3): the videos tiled `nrow` per row, each with its
    label underneath (videos of different lengths: the shorter ones hold their last frame)."""
    from PIL import Image, ImageDraw, ImageFont

    from ..data.media import to_uint8

    arr = [to_uint8(v) for v in videos]                     # each (T, H, W, C)
    if len(arr) != len(labels):
        raise ValueError(f"{len(arr)} videos for {len(labels)} labels")
    T = max(a.shape[0] for a in arr)
    h, w = arr[0].shape[1] * scale, arr[0].shape[2] * scale
    font = ImageFont.load_default(size=10)
    cell_w = max(w, max(int(font.getlength(s)) for s in labels) + 2)
    rows = -(-len(arr) // nrow)
    W = nrow * (cell_w + pad) + pad
    H = rows * (h + LABEL_H + pad) + pad
    frames = []
    for t in range(T):
        img = Image.new("RGB", (W, H), (24, 24, 24))
        draw = ImageDraw.Draw(img)
        for i, (a, text) in enumerate(zip(arr, labels)):
            r, c = divmod(i, nrow)
            x0, y0 = pad + c * (cell_w + pad), pad + r * (h + LABEL_H + pad)
            f = a[min(t, a.shape[0] - 1)]
            f = f.repeat(scale, 0).repeat(scale, 1)
            tile = Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f).convert("RGB")
            img.paste(tile, (x0 + (cell_w - w) // 2, y0))
            draw.text((x0 + (cell_w - font.getlength(text)) / 2, y0 + h + 1), text, fill=(230, 230, 230), font=font)
        frames.append(np.asarray(img))
    return np.stack(frames)


def _write(frames: np.ndarray, out_dir: Path, name: str, fps: int) -> list[Path]:
    from ..data.media import save_video

    return [save_video(frames, out_dir / f"{name}{suffix}", fps=fps) for suffix in (".gif", ".mp4")]


def video_part(pipe, tc, out_dir: Path, seed: int, per_prompt: int = 5, scale: int = 4):
    """-> (VideoReport, written files). Samples and scores the model (tc: its TrainConfig), then writes the four
    labelled videos."""
    import torch

    from ..evaluation.video_eval import evaluate_video_pipeline

    report = evaluate_video_pipeline(pipe, tc, per_prompt=per_prompt, seed=seed, batch_size=None)
    fps = int(pipe.defaults.fps or 4)
    v, p = report.videos, report.prompts
    written = []
    # one sample per prompt, prompt-major: digit d, direction r is video (d * 4 + r) * per_prompt
    first = torch.arange(0, len(v["t2v"]), per_prompt)
    labels = [short_label(p["t2v"][i]) for i in first.tolist()]
    grid = labelled_video_grid(v["t2v"][first], labels, nrow=len(DIRECTIONS), scale=scale)
    written += _write(grid, out_dir, "moving_digit", fps)
    if "i2v" in v:
        k = min(4, len(v["i2v"]))
        vids = torch.stack([x for i in range(k) for x in (v["i2v_real"][i], v["i2v"][i])])
        labels = [s for i in range(k) for s in (f"real: {short_label(p['i2v'][i])}", "continued")]
        written += _write(labelled_video_grid(vids, labels, nrow=2, scale=scale), out_dir, "moving_digit_continued",
                          fps)
    if "long" in v:
        k = min(2, len(v["long"]))
        written += _write(labelled_video_grid(v["long"][:k], [short_label(s) for s in p["long"][:k]], nrow=k,
                                              scale=scale), out_dir, "moving_digit_long", fps)
    if "v2v" in v:
        k = min(4, len(v["v2v"]))
        vids = torch.stack([x for i in range(k) for x in (v["v2v_source"][i], v["v2v"][i])])
        labels = [s for i in range(k) for s in (f"source: {short_label(p['v2v_source'][i])}",
                                                f"edit: {short_label(p['v2v'][i])}")]
        written += _write(labelled_video_grid(vids, labels, nrow=2, scale=scale), out_dir, "moving_digit_edited", fps)
    return report, written

