"""Scoring a moving-digits video model with the frame reader: text-to-video, image-to-video, long videos
through the sliding window, video-to-video; and the same reader on held-out real videos (its ceiling).

`evaluate_video_pipeline(pipe)` is what `starflow evaluate-video` and `starflow demo` run. Protocols:
- text-to-video: `per_prompt` videos for each of the 40 prompts "a handwritten digit <d> moving <dir>";
- real: as many held-out test videos, read the same way (the reader's own ceiling, ~1.0);
- image-to-video: the first frame of held-out test videos, continued under their captions; the digit is the
  majority of the generated frames (the given one left out), the motion is judged on the whole track;
- long: `long_factor` times the trained number of frames (the deep block's sliding window); the share of
  all frames that read the prompted digit, and the share of videos that keep moving as prompted;
- video-to-video: held-out test videos inverted under their captions and sampled again under the caption of
  another digit with the same direction: the share of edits reading the new digit, and how far (pixels, mean
  over frames) the edit's tracked digit is from the source's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.moving_digits import DIRECTIONS, MovingDigitsDataset, moving_caption
from .video_reader import VideoFigures, VideoReader, majority_digits, motion_ok, moves_every_step, score_videos

__all__ = ["VideoReport", "evaluate_video_pipeline", "moving_digit_setting", "video_prompt_accuracy"]


@dataclass
class VideoReport:
    t2v: VideoFigures
    real: VideoFigures
    i2v: VideoFigures | None = None
    long_digit: float | None = None          # share of long-video frames reading the prompted digit
    long_steps_moving: float | None = None   # share of all long-video steps where the digit moves (>= 1 px)
    long_moving: float | None = None         # share of long videos whose digit moves at every step
    long_as_prompted: float | None = None    # share of long videos moving as prompted all along (motion_ok)
    long_frames: int | None = None
    v2v_digit: float | None = None           # share of edits whose majority digit is the new one
    v2v_position_error: float | None = None  # mean distance (pixels) between edited and source positions
    v2v_videos: int | None = None
    seconds: dict = field(default_factory=dict)
    videos: dict = field(default_factory=dict, repr=False)   # name -> (N, T, C, H, W) in [-1, 1], for files
    prompts: dict = field(default_factory=dict, repr=False)

    def lines(self) -> list[str]:
        out = [f"video prompts (text-to-video): {self.t2v.line()}",
               f"  real held-out videos, same reader (its ceiling): {self.real.line()}"]
        if self.i2v is not None:
            out.append(f"video image-to-video (held-out first frames): digit kept {self.i2v.digit:.2f}, "
                       f"direction {self.i2v.direction:.2f}, consistency {self.i2v.consistency:.2f} "
                       f"({self.i2v.num_videos} videos)")
        if self.long_digit is not None:
            out.append(f"video long ({self.long_frames} frames, sliding window): digit kept in {self.long_digit:.2f} "
                       f"of frames; it moves at {self.long_steps_moving:.2f} of steps, at every step in "
                       f"{self.long_moving:.2f} of videos, as prompted all along in {self.long_as_prompted:.2f}")
        if self.v2v_digit is not None:
            out.append(f"video-to-video (same motion, another digit): new digit {self.v2v_digit:.2f}, positions "
                       f"{self.v2v_position_error:.2f} px from the source's on average ({self.v2v_videos} videos)")
        return out

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("long_digit", "long_steps_moving", "long_moving", "long_as_prompted",
                                            "long_frames", "v2v_digit",
                                            "v2v_position_error", "v2v_videos", "seconds")}
        d.update(t2v=self.t2v.to_dict(), real=self.real.to_dict(), i2v=self.i2v.to_dict() if self.i2v else None)
        return d


def moving_digit_setting(tc) -> dict:
    """The moving digits a model was trained on (its TrainConfig), as MovingDigitsDataset arguments."""
    if tc is None or tc.data.dataset != "moving_digits":
        raise ValueError("scoring moving digits needs a model trained on them (a `starflow train` export with "
                         "data.dataset: moving_digits)")
    d = tc.data
    return dict(canvas=d.canvas, num_frames=d.num_frames, speed=d.speed, start=d.start, align=d.align,
                motion=d.motion)


def _prompt(pipe, digit: int, direction: int) -> str:
    """The training caption, or the class index for a label-conditioned model."""
    from .sources import condition_of

    if condition_of(pipe) == "labels":
        return str(digit * len(DIRECTIONS) + direction)
    return moving_caption(digit, direction)


def _to_unit(values: torch.Tensor) -> torch.Tensor:
    from ..data.base import to_unit_range
    from ..data.digits import DIGITS_LEVELS
    return to_unit_range(values, DIGITS_LEVELS)


def evaluate_video_pipeline(pipe, tc=None, *, per_prompt: int = 5, i2v_videos: int = 40, long_videos: int = 40,
                            long_factor: int = 4, v2v_videos: int = 40, seed: int = 0, batch_size: int | None = None,
                            reader: VideoReader | None = None, progress: bool = False, **call_kwargs) -> VideoReport:
    """Score a moving-digits video pipeline (see the module docstring); parts with a count of 0 are skipped.
    tc: the model's TrainConfig (default: the one its export carries). call_kwargs go to every pipeline call
    (guidance, method, denoise...). The sampler is the exact sequential one unless `method` says otherwise (the
    same fixed point as Jacobi's, and on small models the fastest), long videos included: it slides the
    attention window the same way."""
    from .sources import train_config_of

    if per_prompt < 1:
        raise ValueError("per_prompt must be >= 1")
    setting = moving_digit_setting(tc if tc is not None else train_config_of(pipe))
    T, wrap = setting["num_frames"], setting["motion"] == "wrap"
    read = (lambda v: reader.read(v, wrap=wrap))   # noqa: E731
    reader = reader or VideoReader()
    call_kwargs.setdefault("method", "sequential")
    kw = dict(seed=seed, output_type="pt", progress=progress, batch_size=batch_size, **call_kwargs)
    seconds, videos, prompts_out = {}, {}, {}

    # text-to-video: every (digit, direction), per_prompt each
    pairs = [(d, r) for d in range(10) for r in range(len(DIRECTIONS))]
    prompts = [_prompt(pipe, d, r) for d, r in pairs]
    t0 = time.perf_counter()
    x = pipe(prompts, num_videos_per_prompt=per_prompt, **kw).frames * 2 - 1
    seconds["t2v"] = time.perf_counter() - t0
    digits = np.repeat([d for d, _ in pairs], per_prompt)
    dirs = np.repeat([r for _, r in pairs], per_prompt)
    t2v = score_videos(read(x), digits, dirs).figures()
    videos["t2v"], prompts_out["t2v"] = x, [p for p in prompts for _ in range(per_prompt)]

    # the reader on held-out real videos, as many as the generated ones
    real_set = MovingDigitsDataset("test", len(x), seed=seed, **setting)
    real = score_videos(read(_to_unit(real_set.values)), real_set.digits.numpy(),
                        real_set.directions.numpy()).figures()
    report = VideoReport(t2v=t2v, real=real, seconds=seconds, videos=videos, prompts=prompts_out)

    held = MovingDigitsDataset("test", max(i2v_videos, v2v_videos, 1), seed=seed + 1, **setting)
    held_digits, held_dirs = held.digits.numpy(), held.directions.numpy()
    held_prompts = [_prompt(pipe, int(d), int(r)) for d, r in zip(held_digits, held_dirs)]

    if i2v_videos > 0:
        n = i2v_videos
        real_v = _to_unit(held.values[:n])
        t0 = time.perf_counter()
        gen = pipe(held_prompts[:n], image=real_v[:, 0], num_frames=T, **kw).frames * 2 - 1
        seconds["i2v"] = time.perf_counter() - t0
        report.i2v = score_videos(read(gen), held_digits[:n], held_dirs[:n], digit_frames=slice(1, None)).figures()
        videos["i2v_real"], videos["i2v"] = real_v, gen
        prompts_out["i2v"] = held_prompts[:n]

    if long_videos > 0:
        # 7 is prime to the 40 prompts: any count is spread over digits and directions, and 40 is every prompt once
        picks = [pairs[(7 * i + 3) % len(pairs)] for i in range(long_videos)]
        frames = long_factor * T
        t0 = time.perf_counter()
        gen = pipe([_prompt(pipe, d, r) for d, r in picks], num_frames=frames, **kw).frames
        gen = gen * 2 - 1
        seconds["long"] = time.perf_counter() - t0
        rd = read(gen)
        want = np.array([d for d, _ in picks])
        report.long_digit = float((rd.digits == want[:, None]).mean())
        report.long_as_prompted = float(np.mean([motion_ok(rd.positions[i], r, rd.canvas, wrap=wrap)
                                                 for i, (_, r) in enumerate(picks)]))
        report.long_moving = float(np.mean([moves_every_step(rd.positions[i], rd.canvas, wrap)
                                            for i in range(len(picks))]))
        report.long_steps_moving = float(np.mean([moves_every_step(rd.positions[i, t:t + 2], rd.canvas, wrap)
                                                  for i in range(len(picks)) for t in range(frames - 1)]))
        report.long_frames = frames
        videos["long"], prompts_out["long"] = gen, [_prompt(pipe, d, r) for d, r in picks]

    if v2v_videos > 0:
        n = v2v_videos
        src = _to_unit(held.values[:n])
        g = np.random.default_rng(seed)
        new_digits = (held_digits[:n] + g.integers(1, 10, size=n)) % 10        # always another digit
        new_prompts = [_prompt(pipe, int(d), int(r)) for d, r in zip(new_digits, held_dirs[:n])]
        t0 = time.perf_counter()
        gen = pipe(new_prompts, video=src, source_prompt=held_prompts[:n], **{k: v for k, v in kw.items() if k not in
                                                                               ("batch_size", "progress")}).frames
        gen = gen * 2 - 1
        seconds["v2v"] = time.perf_counter() - t0
        rd, rs = read(gen), read(src)
        report.v2v_digit = float((majority_digits(rd.digits) == new_digits).mean())
        report.v2v_position_error = float(np.linalg.norm(rd.positions - rs.positions, axis=-1).mean())
        report.v2v_videos = n
        videos["v2v_source"], videos["v2v"] = src, gen
        prompts_out["v2v_source"], prompts_out["v2v"] = held_prompts[:n], new_prompts
    return report


def video_prompt_accuracy(pipe, samples_per_prompt: int, seed: int, call: dict, reader: VideoReader | None = None):
    """`starflow evaluate prompt-accuracy` for moving digits: `samples_per_prompt` videos for each of the 40
    prompts, read frame by frame; a video is right when its majority digit is the prompted one.
    -> (PromptAccuracy per prompted digit, videos (N, T, C, H, W) in [-1, 1])."""
    from .classifier import PromptAccuracy
    from .sources import train_config_of

    setting = moving_digit_setting(train_config_of(pipe))
    reader = reader or VideoReader()
    pairs = [(d, r) for d in range(10) for r in range(len(DIRECTIONS))]
    x = pipe([_prompt(pipe, d, r) for d, r in pairs], num_videos_per_prompt=samples_per_prompt, seed=seed,
             output_type="pt", progress=False, **call).frames * 2 - 1
    targets = np.repeat([d for d, _ in pairs], samples_per_prompt)
    preds = majority_digits(reader.read(x, wrap=setting["motion"] == "wrap").digits)
    hits = preds == targets
    per = {int(d): float(hits[targets == d].mean()) for d in range(10)}
    return PromptAccuracy(float(hits.mean()), per, len(targets), reader.classifier.test_accuracy, preds, targets), x
