"""Synthetic moving digits: an 8x8 digit bouncing inside a larger canvas, built from the bundled digits.

As in Moving MNIST, each video puts one digit sprite on a blank `canvas` x `canvas` frame and moves it
at `speed` pixels per frame along one axis (left/right or up/down); at a canvas edge it bounces back
(mirrored: it never leaves the canvas, never stops), so a video can go on for any number of frames.
The other coordinate stays fixed, at random. Captions name the digit and the *initial* direction:
"a handwritten digit seven moving left"; the start is drawn so that the first step really goes that way.

When the free span (canvas - 8) is a multiple of the speed, start positions are multiples of the speed
too: every frame is then a whole number of steps from both walls, bounces land exactly on them and each
frame is the previous one shifted by exactly `speed` pixels (for a conv autoencoder of that spatial
factor: one latent token). Labels combine digit and initial direction: `label = digit * 4 + direction`
(40 classes). Videos are generated deterministically from `seed`.
"""
from __future__ import annotations

import torch

from .base import NUMBER_WORDS, InMemoryDataset
from .digits import DIGITS_LEVELS, digits_split, load_digits_arrays

__all__ = ["DIRECTIONS", "SPRITE", "MOTIONS", "MovingDigitsDataset", "moving_caption", "render_moving_digit",
           "bounce_positions", "direction_axis"]

DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = ("bounce", "wrap")   # at an edge the digit bounces back, or leaves and comes back in at the other edge
SPRITE = 8                 # the bundled digits are 8x8; they are pasted at that size, never rescaled


def moving_caption(digit: int, direction: int) -> str:
    return f"a handwritten digit {NUMBER_WORDS[digit]} moving {DIRECTIONS[direction]}"


def direction_axis(direction: int) -> tuple[int, int]:
    """(axis, sign): axis 1 = columns (left -1 / right +1), axis 0 = rows (up -1 / down +1)."""
    return (1 if direction in (0, 1) else 0), (-1 if direction in (0, 2) else 1)


def bounce_positions(start: int, velocity: int, span: int, num_frames: int) -> list[int]:
    """Positions in 0..span of a point moving `velocity` pixels per frame, mirrored at 0 and at span."""
    if not 0 <= start <= span:
        raise ValueError(f"start {start} outside 0..{span}")
    if not 0 < abs(velocity) <= span:
        raise ValueError(f"speed {abs(velocity)} must be in 1..{span} (the free span of the canvas)")
    out, p, v = [], start, velocity
    for _ in range(num_frames):
        out.append(p)
        p += v
        if p < 0:
            p, v = -p, -v
        elif p > span:
            p, v = 2 * span - p, -v
    return out


def render_moving_digit(sprite: torch.Tensor, direction: int, offset: int, canvas: int, num_frames: int,
                        start: int, speed: int, motion: str = "bounce") -> torch.Tensor:
    """sprite (1, s, s) uint8 -> video (T, 1, canvas, canvas) uint8: the sprite starts at `start` on the moving
    axis and moves `speed` pixels per frame along `direction`, bouncing off the edges (motion "bounce") or
    leaving at one edge and coming back in at the other (motion "wrap": the canvas is a torus).

    `offset` is the fixed coordinate (row for left/right, column for up/down), in 0..canvas-s.
    """
    s = sprite.size(-1)
    span = canvas - s
    if span < 1:
        raise ValueError(f"canvas {canvas} must be larger than the {s}-pixel digit")
    if not 0 <= offset <= span:
        raise ValueError(f"offset {offset} outside 0..{span}")
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, not {motion!r}")
    axis, sign = direction_axis(direction)
    if motion == "wrap":
        positions = [(start + sign * speed * t) % canvas for t in range(num_frames)]
    else:
        positions = bounce_positions(start, sign * speed, span, num_frames)
    video = torch.zeros(num_frames, 1, canvas, canvas, dtype=torch.uint8)
    for t, pos in enumerate(positions):
        r, c = (offset, pos) if axis == 1 else (pos, offset)
        frame = torch.zeros(1, canvas, canvas, dtype=torch.uint8)
        frame[:, :s, :s] = sprite
        video[t] = frame.roll((r, c), dims=(1, 2))                  # wraps around the edges (never, when bouncing)
    return video


def start_choices(direction: int, span: int, speed: int, start: str = "any", motion: str = "bounce") -> list[int]:
    """Start positions whose first step goes in `direction` without touching a wall first; on the lattice of
    multiples of `speed` when the span is one (exact bounces, whole-step shifts). start="wall": only the wall
    the digit moves away from. Wrapping motion: anywhere on the canvas (span + 8 positions), on the lattice of
    multiples of `speed` when the canvas side is one."""
    _, sign = direction_axis(direction)
    if motion == "wrap":
        side = span + SPRITE
        step = speed if side % speed == 0 else 1
        return [0 if sign > 0 else span] if start == "wall" else list(range(0, side, step))
    if start == "wall":
        return [0 if sign > 0 else span]
    lo, hi = (0, span - speed) if sign > 0 else (speed, span)
    step = speed if span % speed == 0 else 1
    return [p for p in range(lo, hi + 1) if p % step == 0]


class MovingDigitsDataset(InMemoryDataset):
    """split "train" / "test" draws sprites from the digits protocol split of the same name, so test
    videos show digits never seen in training."""

    def __init__(self, split: str = "train", num_videos: int = 2000, canvas: int = 16, num_frames: int = 8,
                 seed: int = 0, speed: int = 4, start: str = "any", align: bool = False, motion: str = "bounce"):
        if split not in ("train", "test"):
            raise ValueError(f"moving digits split must be 'train' or 'test', not {split!r}")
        if num_videos < 1 or num_frames < 1:
            raise ValueError("num_videos and num_frames must be >= 1")
        if canvas < SPRITE + 1:
            raise ValueError(f"canvas must be at least {SPRITE + 1} pixels to move an 8x8 digit, got {canvas}")
        span = canvas - SPRITE
        if start not in ("any", "wall"):
            raise ValueError(f"start must be 'any' or 'wall', not {start!r}")
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, not {motion!r}")
        if not 1 <= speed <= span:
            raise ValueError(f"speed must be 1..{span} pixels per frame on a {canvas}-pixel canvas, got {speed}")
        values, labels = load_digits_arrays()
        train, test = digits_split()
        pool = train if split == "train" else test
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        sprite_idx = pool[torch.randint(len(pool), (num_videos,), generator=g)]
        directions = torch.randint(len(DIRECTIONS), (num_videos,), generator=g)
        if align:   # the fixed coordinate on the multiples of the speed too: the digit sits on a speed-sized grid
            grid = torch.arange(0, span + 1, speed)
            offsets = grid[torch.randint(len(grid), (num_videos,), generator=g)]
        else:
            offsets = torch.randint(span + 1, (num_videos,), generator=g)
        pick = torch.rand(num_videos, generator=g)
        starts = []
        for d, u in zip(directions.tolist(), pick.tolist()):
            choices = start_choices(d, span, speed, start, motion)
            starts.append(choices[min(int(u * len(choices)), len(choices) - 1)])
        videos = torch.stack([render_moving_digit(values[i], int(d), int(o), canvas, num_frames, s, speed, motion)
                              for i, d, o, s in zip(sprite_idx.tolist(), directions, offsets, starts)])
        digits = labels[sprite_idx]
        captions = [moving_caption(int(d), int(r)) for d, r in zip(digits, directions)]
        names = [moving_caption(d, r) for d in range(10) for r in range(len(DIRECTIONS))]
        super().__init__(videos, captions, digits * len(DIRECTIONS) + directions, names, DIGITS_LEVELS)
        self.digits = digits
        self.directions = directions
        self.starts = torch.tensor(starts)
        self.offsets = offsets
        self.speed = speed
        self.motion = motion
        self.split = split
