"""Synthetic moving digits: an 8x8 digit drifting across a larger canvas, built from the bundled digits.

Each video puts one digit sprite on a blank `canvas` x `canvas` frame and moves it in a straight line
(left, right, up or down) from one edge to the other over `num_frames` frames; the other coordinate
is fixed at random. Captions name digit and direction: "a handwritten digit seven moving left".
Labels combine both: `label = digit * 4 + direction` (40 classes), so class-conditional video models
can be asked for a direction too. Videos are generated deterministically from `seed`.
"""
from __future__ import annotations

import torch

from .base import NUMBER_WORDS, InMemoryDataset
from .digits import DIGITS_LEVELS, digits_split, load_digits_arrays

__all__ = ["DIRECTIONS", "MovingDigitsDataset", "moving_caption", "render_moving_digit"]

DIRECTIONS = ("left", "right", "up", "down")


def moving_caption(digit: int, direction: int) -> str:
    return f"a handwritten digit {NUMBER_WORDS[digit]} moving {DIRECTIONS[direction]}"


def render_moving_digit(sprite: torch.Tensor, direction: int, offset: int, canvas: int,
                        num_frames: int) -> torch.Tensor:
    """sprite (1, s, s) uint8 -> video (T, 1, canvas, canvas) uint8 with the sprite moving along `direction`.

    `offset` is the fixed coordinate (row for left/right, column for up/down), in 0..canvas-s.
    """
    s = sprite.size(-1)
    span = canvas - s
    if span < 1:
        raise ValueError(f"canvas {canvas} must be larger than the {s}-pixel digit")
    if not 0 <= offset <= span:
        raise ValueError(f"offset {offset} outside 0..{span}")
    video = torch.zeros(num_frames, 1, canvas, canvas, dtype=torch.uint8)
    for t in range(num_frames):
        # the moving coordinate runs edge to edge, evenly in time (rounded to whole pixels)
        pos = round(span * t / max(num_frames - 1, 1))
        if direction in (0, 2):  # left / up: start at the far edge
            pos = span - pos
        r, c = (offset, pos) if direction in (0, 1) else (pos, offset)
        video[t, :, r:r + s, c:c + s] = sprite
    return video


class MovingDigitsDataset(InMemoryDataset):
    """split "train" / "test" draws sprites from the digits protocol split of the same name, so test
    videos show digits never seen in training."""

    def __init__(self, split: str = "train", num_videos: int = 2000, canvas: int = 16, num_frames: int = 8,
                 seed: int = 0):
        if split not in ("train", "test"):
            raise ValueError(f"moving digits split must be 'train' or 'test', not {split!r}")
        if num_videos < 1 or num_frames < 1:
            raise ValueError("num_videos and num_frames must be >= 1")
        if canvas < 9:
            raise ValueError(f"canvas must be at least 9 pixels to move an 8x8 digit, got {canvas}")
        values, labels = load_digits_arrays()
        train, test = digits_split()
        pool = train if split == "train" else test
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        sprite_idx = pool[torch.randint(len(pool), (num_videos,), generator=g)]
        directions = torch.randint(len(DIRECTIONS), (num_videos,), generator=g)
        offsets = torch.randint(canvas - 8 + 1, (num_videos,), generator=g)
        videos = torch.stack([render_moving_digit(values[i], int(d), int(o), canvas, num_frames)
                              for i, d, o in zip(sprite_idx.tolist(), directions, offsets)])
        digits = labels[sprite_idx]
        captions = [moving_caption(int(d), int(r)) for d, r in zip(digits, directions)]
        names = [moving_caption(d, r) for d in range(10) for r in range(len(DIRECTIONS))]
        super().__init__(videos, captions, digits * len(DIRECTIONS) + directions, names, DIGITS_LEVELS)
        self.digits = digits
        self.directions = directions
        self.split = split
