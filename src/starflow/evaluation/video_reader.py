"""Reading moving-digit videos frame by frame: where is the digit, which digit is it, how does it move.

An independent reader, so that a video model is scored on what its videos show, not on its likelihood:
- each frame on its own: the 8x8 window holding the most ink locates the digit (among windows within a
  few percent of that, the one the digits classifier reads most confidently: the bundled digits often have
  blank border columns, so several windows hold all the ink); the classifier (an SVM fitted on the digits
  training split) reads it; a frame whose ink is mostly outside that window, or that has too little ink, has
  no readable digit;
- per video: the majority digit against the prompted one; the motion against the prompted initial
  direction (`motion_ok`); consistency, the share of frames that agree with the video's majority digit (a
  frame with no readable digit never agrees, so noise or blank frames score low).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.moving_digits import SPRITE, direction_axis
from .classifier import DigitsClassifier

__all__ = ["FrameReadings", "VideoReader", "VideoScores", "VideoFigures", "motion_ok", "moves_every_step",
           "score_videos", "majority_digits"]

LEVEL_MAX = 16          # digit values 0..16, pixels in [-1, 1]: v = (x + 1) * 8


@dataclass
class FrameReadings:
    digits: np.ndarray        # (N, T) int: the digit read in each frame, -1 where none is readable
    positions: np.ndarray     # (N, T, 2) float: (row, column) of the located 8x8 window's top-left corner
    readable: np.ndarray      # (N, T) bool
    canvas: tuple[int, int]   # (H, W) of the frames
    wrap: bool = False        # read on a torus: a digit may leave at one edge and come back in at the other

    def __len__(self) -> int:
        return self.digits.shape[0]


class VideoReader:
    """Locates, reads and tracks the digit in every frame of (N, T, C, H, W) videos in [-1, 1].

    min_mass: least ink (sum of 0..16 values) in the digit's window for a readable frame (the bundled
    digits hold 185..433); min_inside: least share of the frame's ink inside that window; tie: windows
    holding within this fraction of the most ink are candidates for the digit's place."""

    def __init__(self, classifier: DigitsClassifier | None = None, min_mass: float = 100.0,
                 min_inside: float = 0.75, tie: float = 0.03, max_candidates: int = 9):
        self.classifier = classifier or DigitsClassifier.fit()
        self.min_mass, self.min_inside, self.tie, self.max_candidates = min_mass, min_inside, tie, max_candidates

    def read(self, videos: torch.Tensor | np.ndarray, wrap: bool = False) -> FrameReadings:
        """wrap: the frames are a torus (moving digits with motion "wrap"): windows run across the edges, and a
        position is where the window's top-left corner is, in 0..H-1 / 0..W-1."""
        x = torch.as_tensor(videos).detach().float().cpu()
        if x.dim() == 4:
            x = x[None]
        if x.dim() != 5:
            raise ValueError(f"expected videos (N, T, C, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        N, T, _, H, W = x.shape
        if H < SPRITE or W < SPRITE:
            raise ValueError(f"frames of {H}x{W} cannot hold an {SPRITE}x{SPRITE} digit")
        v = ((x.mean(2) + 1) * (LEVEL_MAX / 2)).clamp(0, LEVEL_MAX).nan_to_num(0.0).reshape(N * T, H, W)
        total = v.sum((1, 2))
        if wrap:   # every top-left corner on the torus: the frame continued past its right and bottom edges
            v = F.pad(v[:, None], (0, SPRITE - 1, 0, SPRITE - 1), mode="circular")[:, 0]
        box = F.avg_pool2d(v[:, None], SPRITE, stride=1)[:, 0] * SPRITE ** 2      # (M, gh, gw) ink per window
        M, gh, gw = box.shape
        flat = box.reshape(M, -1)
        best = flat.max(1).values                                                  # (M,)
        readable = (best >= self.min_mass) & (best >= self.min_inside * total)
        # candidate windows: the most ink, within `tie`; the classifier's most confident one wins
        k = min(self.max_candidates, flat.size(1))
        top = flat.topk(k, dim=1)
        cand = top.values >= best[:, None] * (1 - self.tie)                         # (M, k), column 0 always
        digits = np.full(M, -1, dtype=np.int64)
        pos_idx = top.indices[:, 0].clone()
        rows = torch.nonzero(readable[:, None] & cand)                              # (K, 2): frame, candidate
        if len(rows):
            f, j = rows[:, 0], rows[:, 1]
            idx = top.indices[f, j]
            r, c = idx // gw, idx % gw
            patches = v.unfold(1, SPRITE, 1).unfold(2, SPRITE, 1)                  # (M, gh, gw, 8, 8)
            vals = patches[f, r, c].reshape(len(f), SPRITE * SPRITE).numpy()
            dec = np.asarray(self.classifier.model.decision_function(vals))        # (K, 10) one-vs-rest scores
            conf = dec.max(1)
            pred = self.classifier.model.classes_[dec.argmax(1)]
            order = np.lexsort((-conf, f.numpy()))                                 # by frame, most confident first
            seen = set()
            for i in order:
                fi = int(f[i])
                if fi in seen:
                    continue
                seen.add(fi)
                digits[fi] = int(pred[i])
                pos_idx[fi] = idx[i]
        positions = torch.stack([pos_idx // gw, pos_idx % gw], 1).float().numpy()
        return FrameReadings(digits.reshape(N, T), positions.reshape(N, T, 2), readable.numpy().reshape(N, T),
                             (H, W), wrap)


def majority_digits(digits: np.ndarray) -> np.ndarray:
    """(N, T) frame digits (-1: unreadable) -> (N,) the most frequent readable digit (-1 if none)."""
    out = np.full(digits.shape[0], -1, dtype=np.int64)
    for i, row in enumerate(digits):
        ok = row[row >= 0]
        if ok.size:
            out[i] = int(np.bincount(ok, minlength=10).argmax())
    return out


def _circular(d: np.ndarray, side: int) -> np.ndarray:
    """Differences on a circle of `side` pixels, in [-side/2, side/2)."""
    return (d + side / 2) % side - side / 2


def motion_ok(positions: np.ndarray, direction: int, canvas: tuple[int, int], min_step: float = 1.0,
              max_perp: float = 2.0, wall_tol: float = 1.0, wrap: bool = False) -> bool:
    """Does a track (T, 2) of (row, column) positions move as a digit that starts in `direction` (index into
    DIRECTIONS) and bounces off the walls? The first step goes that way (at least `min_step` pixels along the
    axis, more than across it); every step moves at least `min_step` along the axis (it keeps moving); the
    other coordinate stays within `max_perp`; the motion turns back only at a wall (within `wall_tol`).
    wrap: on a torus, the digit never turns: every step goes the prompted way (differences taken round the
    canvas)."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 2:
        raise ValueError(f"a track needs (T >= 2, 2) positions, got shape {p.shape}")
    axis, sign = direction_axis(direction)
    span = canvas[axis] - SPRITE
    along = p[:, axis]
    steps = np.diff(along)
    across = p[:, 1 - axis] - p[0, 1 - axis]
    if wrap:
        steps, across = _circular(steps, canvas[axis]), _circular(across, canvas[1 - axis])
    first_across = abs(across[1])
    if sign * steps[0] < min_step or first_across >= abs(steps[0]):
        return False
    if np.any(np.abs(steps) < min_step):
        return False
    if np.ptp(across) > max_perp:
        return False
    if wrap:
        return bool(np.all(sign * steps >= min_step))
    turns = np.nonzero(np.sign(steps[1:]) != np.sign(steps[:-1]))[0] + 1     # frames where the motion reverses
    return bool(all(min(abs(along[t]), abs(span - along[t])) <= wall_tol for t in turns))


def moves_every_step(positions: np.ndarray, canvas: tuple[int, int], wrap: bool = False,
                     min_step: float = 1.0) -> bool:
    """Does the tracked digit (T, 2) move at least `min_step` pixels at every step (in any direction)?"""
    d = np.diff(np.asarray(positions, dtype=np.float64), axis=0)
    if wrap:
        d = np.stack([_circular(d[:, 0], canvas[0]), _circular(d[:, 1], canvas[1])], 1)
    return bool(np.all(np.abs(d).max(1) >= min_step))


@dataclass
class VideoScores:
    """Per-video results; `figures()` averages them."""
    majority: np.ndarray      # (N,) majority digit (-1: nothing readable)
    digit: np.ndarray         # (N,) bool: majority == prompted digit
    direction: np.ndarray     # (N,) bool: motion_ok for the prompted initial direction
    consistency: np.ndarray   # (N,) share of frames reading the majority digit

    def figures(self) -> "VideoFigures":
        n = len(self.digit)
        if n == 0:
            raise ValueError("no videos to score")
        return VideoFigures(float(self.digit.mean()), float(self.direction.mean()),
                            float((self.digit & self.direction).mean()), float(self.consistency.mean()), n)


@dataclass
class VideoFigures:
    digit: float              # share of videos whose majority digit is the prompted one
    direction: float          # share of videos moving as prompted (motion_ok)
    both: float               # share with both right
    consistency: float        # mean share of frames agreeing with their video's majority digit
    num_videos: int

    def line(self) -> str:
        return (f"digit {self.digit:.2f}, direction {self.direction:.2f}, both {self.both:.2f}, "
                f"consistency {self.consistency:.2f} ({self.num_videos} videos)")

    def to_dict(self) -> dict:
        return asdict(self)


def score_videos(readings: FrameReadings, digits, directions, digit_frames: slice = slice(None)) -> VideoScores:
    """Score read videos against prompted digits (N,) and initial directions (N,) (indices into DIRECTIONS).
    digit_frames: the frames the majority digit and consistency count (e.g. slice(1, None) to leave out a
    given first frame); the motion is always judged on the whole track."""
    digits, directions = np.asarray(digits), np.asarray(directions)
    n = len(readings)
    if digits.shape != (n,) or directions.shape != (n,):
        raise ValueError(f"{n} videos but {digits.shape} digits and {directions.shape} directions")
    frames = readings.digits[:, digit_frames]
    majority = majority_digits(frames)
    consistency = ((frames == majority[:, None]) & (majority[:, None] >= 0)).mean(1)
    motion = np.array([motion_ok(readings.positions[i], int(directions[i]), readings.canvas, wrap=readings.wrap)
                       for i in range(n)])
    return VideoScores(majority, majority == digits, motion, consistency)
