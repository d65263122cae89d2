"""The official prompt templates (fps, noise level, aspect ratio), string for string.

Checkpoints were trained on prompts wrapped in exactly these strings, so any change in wording,
spacing or newlines shifts the text embeddings the flow was trained on. They are applied in the
official order: fps, then noise level, then aspect ratio.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["apply_templates", "fps_template", "noise_template", "aspect_template"]


def fps_template(text: str, fps: int) -> str:
    # fps 0 marks an image sample in a video model's mixed image/video training
    return f"A video with {fps} fps:\n{text}\n" if fps > 0 else f"An image:\n{text}\n"


def noise_template(text: str, level: int) -> str:
    return f"Noise Level {level}:\n{text}"


def aspect_template(text: str, ratio: str) -> str:
    return f"{text}\n in a {ratio} aspect ratio.\n"


def _per_prompt(value: Any, n: int, name: str) -> list[Any]:
    """Broadcast a scalar (or 1-element tensor/list) to n prompts; check per-prompt lengths."""
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(-1).tolist()
    elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} values for {n} prompts; give one value or one per prompt")
    return value


def _as_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__int__"):
        raise TypeError(f"{name} must be a number, got {v!r}")
    return int(v)


def apply_templates(prompts: Sequence[str], *, fps: Any = None, noise_std: Any = None,
                    aspect_ratio: Any = None) -> list[str]:
    """Wrap prompts in the official templates that are asked for (None = not used).

    fps: int, per-prompt ints or a tensor; 0 means an image ("An image:").
    noise_std: float, per-prompt floats or a tensor; written as int(noise_std * 1000) like the official
        code, so float32 tensors can round down (0.7 -> 699) exactly as they do there.
    aspect_ratio: a ratio string such as "16:9", or one per prompt.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    text = [str(p) if isinstance(p, str) else _bad_prompt(p) for p in prompts]
    n = len(text)
    if fps is not None:
        fs = [_as_int(f, "fps") for f in _per_prompt(fps, n, "fps")]
        if any(f < 0 for f in fs):
            raise ValueError(f"fps must be >= 0 (0 = image), got {fs}")
        text = [fps_template(t, f) for t, f in zip(text, fs)]
    if noise_std is not None:
        levels = []
        for s in _per_prompt(noise_std, n, "noise_std"):
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise TypeError(f"noise_std must be a number, got {s!r}")
            levels.append(int(s * 1000))
        text = [noise_template(t, lv) for t, lv in zip(text, levels)]
    if aspect_ratio is not None:
        ratios = _per_prompt(aspect_ratio, n, "aspect_ratio")
        if not all(isinstance(r, str) and r for r in ratios):
            raise TypeError(f"aspect_ratio must be a non-empty string such as '16:9', got {aspect_ratio!r}")
        text = [aspect_template(t, r) for t, r in zip(text, ratios)]
    return text


def _bad_prompt(p: Any) -> str:
    raise TypeError(f"each prompt must be a string, got {type(p).__name__} ({p!r})")
