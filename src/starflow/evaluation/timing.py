"""Timing helpers shared by the benchmarks: warm-up then timed runs, device sync, the machine's load."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["sync", "timed", "interleaved", "loadavg", "ms", "seconds"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], Any]:
    """Run fn warmup + repeats times; return the timed durations (s) and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def interleaved(fns: dict[Any, Callable[[], Any]], device: torch.device, warmup: int, repeats: int
                ) -> dict[Any, list[float]]:
    """Time several functions in turns: each round runs every one once, the order reversed every other round.
    For figures read as ratios of each other (ours / official, long video / short video): a shared CPU's speed
    drifts by 20-40% within minutes (benchmarks/RESULTS.md), and timing one after the other would put the drift
    into the ratio. Returns each key's durations (s), one per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[Any, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def loadavg() -> float | None:
    """The 1-minute load average: other processes on the same cores distort CPU timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def ms(ts: list[float]) -> float:
    """Median of durations in s, as ms."""
    return round(1000 * statistics.median(ts), 2)


def seconds(ts: list[float]) -> float:
    return round(statistics.median(ts), 3)


def random_inputs(model, batch: int, seed: int, device, dtype, frames: int | None = None):
    """Fixed-seed randn images / noise (B, C, H, W), or videos (B, frames, C, H, W), and text embeddings
    (B, L, txt_dim) for y and y_null: the bench's inputs (ours and the official code's get the same)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) + ((frames,) if frames is not None else ()) + (c.channel_size, c.img_size, c.img_size)
    x = torch.randn(*shape, generator=g)
    y = y_null = None
    if c.txt_dim > 0:
        L = max(c.txt_size, 1)
        y = torch.randn(batch, L, c.txt_dim, generator=g)
        y_null = torch.randn(batch, L, c.txt_dim, generator=g)
    cast = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
    return cast(x), cast(y), cast(y_null)


def first_sequential_call(run: Callable[[Any], Any], options, compile_steps: bool, device, res: dict,
                          first_key: str, error_key: str, log: Callable[[str], None]):
    """The first sequential call: it compiles the token steps when asked (and stands in for one warm-up run).
    Returns the options to time; when compiling fails (e.g. no C++ compiler for inductor) the eager steps are
    timed instead and `res[error_key]` says why. Its time goes to `res[first_key]`."""
    eager = options.with_(method="sequential", compile=False)
    chosen = eager.with_(compile=compile_steps)
    t0 = time.perf_counter()
    try:
        run(chosen)
    except Exception as e:
        if not compile_steps:
            raise
        res[error_key] = f"{type(e).__name__}: {e}"[:500]
        log(f"compiled sequential steps failed ({res[error_key]}); timing eager steps")
        chosen = eager
        t0 = time.perf_counter()
        run(chosen)
    sync(device)
    res[first_key] = round(time.perf_counter() - t0, 3)
    return chosen
