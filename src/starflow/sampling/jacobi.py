"""The Jacobi sampler: block-wise fixed-point iteration of a block's inverse, in parallel over tokens."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._cpu import adapt_threads
from .inverse import BlockInverse, first_target, slide_window, window_tokens
from .options import JACOBI_SCHEDULES, SamplerOptions

__all__ = ["jacobi_inverse", "JacobiStats", "block_tokens"]


@dataclass
class JacobiStats:
    iterations: int = 0     # trunk calls made by the Jacobi loop
    chunks: int = 0         # chunks solved (official schedule) / window moves (sliding)
    tokens: int = 0         # token positions run through the trunk, over all iterations
    draft_iterations: int = 0   # the same for the low-precision drafts (sampling.draft), when used
    draft_tokens: int = 0


def _all_done(done: bool, device) -> bool:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor(1 if done else 0, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)  # every rank must agree, or their collectives desync
        return bool(t.item())
    return done


def _agree_min(n: int, device) -> int:
    """The smallest n over all ranks (data-dependent step sizes must match, like convergence)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor(n, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())
    return n


def block_tokens(opt: SamplerOptions, inv: BlockInverse) -> int:
    """`opt`'s chunk or window for solving `inv`'s block (SamplerOptions.jacobi_tokens): its sequence's tokens, the
    sequences it runs at once and its width."""
    return opt.jacobi_tokens(inv.U, inv.x_full.size(0), inv.block.proj_in.out_features)


def jacobi_inverse(inv: BlockInverse, block_size: int = 32, threshold: float = 1e-3, max_iter: int = 32,
                   context_frames: int | None = None, window_frames: int | None = None, later_frame_factor: int = 4,
                   progress: bool = False, stats: JacobiStats | None = None, schedule: str = "official",
                   reencode: bool = True) -> torch.Tensor:
    """Block-wise Jacobi fixed-point iteration.

    schedule "official" (the default, the official sampler's schedule): chunks of `block_size` tokens
    (x `later_frame_factor` after the first frame of a video) are solved in parallel; an iteration
    stops a chunk when the relative squared change over the chunk falls below `threshold` or after
    `max_iter` iterations. A video chunk's first iterate is the previous frame.

    schedule "sliding": a window of `block_size` tokens (SamplerOptions.jacobi_tokens: wider than the official
    chunk by default) slides over the sequence; after each
    iteration the window advances past every leading token whose own relative squared change (the
    official rule applied to one token: its mean squared change over the batch and channels, over the
    window's mean square) fell below `threshold`, or that has been iterated `max_iter` times, and new
    tokens enter at its end. No token is iterated once settled, none waits for the slowest of its
    chunk, and the error bound holds per token rather than on average over a chunk. A video token
    enters from the previous frame's map applied to its own noise (BlockInverse.previous_frame_guess).

    With `window_frames`, attention sees at most that many frames: when the window is full the cache
    is rebuilt from the text and the last `context_frames` frames, and decoding goes on; `reencode=False`
    (drafts) keeps the context's entries instead (BlockInverse.slide).
    """
    if block_size < 1 or max_iter < 1:
        raise ValueError("jacobi block size and max iterations must be >= 1")
    if schedule not in JACOBI_SCHEDULES:
        raise ValueError(f"jacobi schedule must be one of {JACOBI_SCHEDULES}, not {schedule!r}")
    U = inv.U
    W, C = window_tokens(inv, context_frames, window_frames)
    target = first_target(inv, W)
    start = inv.start
    bar = tqdm(total=U, initial=start, disable=not progress, desc="jacobi", leave=False)
    solve = _official_chunks if schedule == "official" else _sliding_window
    while True:
        start = solve(inv, start, target, block_size, threshold, max_iter, later_frame_factor, stats, bar)
        if target >= U:
            break
        target = slide_window(inv, start, target, W, C, reencode)
    bar.close()
    return inv.result()


def _count(stats: JacobiStats | None, tokens: int) -> None:
    if stats is not None:
        stats.iterations += 1
        stats.tokens += tokens


def _official_chunks(inv: BlockInverse, start: int, target: int, block_size: int, threshold: float, max_iter: int,
                     later_frame_factor: int, stats: JacobiStats | None, bar) -> int:
    """Solve input positions [start, target) chunk by chunk; returns target."""
    F, x_full = inv.frame_tokens, inv.x_full
    while start < target:
        adapt_threads()
        chunk = min(block_size if start <= F else block_size * later_frame_factor, target - start)
        end = start + chunk
        # `exact` leading inputs of the chunk already have final keys in the cache: input `start` is
        # known, and each iteration fixes one more (token start + i + 1 depends only on inputs up to
        # start + i). Running only the rest gives the same numbers for less work, and an iteration
        # that leaves nothing inexact ends the chunk.
        exact = 0
        for i in range(max_iter):
            # previous frame as the first iterate (unless a draft is there): nothing is exact yet
            prev_frame = i == 0 and start > F and not inv.initialised
            p = start if prev_frame else start + exact
            inp = x_full[:, start - F:end - F] if prev_frame else x_full[:, p:end]
            new = inv.solve(inv.run(inp, p), p, inv.guidance)
            old = x_full[:, p + 1:end + 1]
            num = (new - old).square().sum()
            x_full[:, p + 1:end + 1] = new
            _count(stats, end - p)
            if not prev_frame:
                exact += 1
            if exact == chunk:   # the whole chunk is exact: the same on every rank, no vote needed
                break
            # relative squared change over the whole chunk (the part not re-run did not change)
            diff = num / (new.size(0) * chunk * new.size(2)) / x_full[:, start + 1:end + 1].square().mean()
            # the last iteration's keys stay in the cache: no extra pass to refresh them
            if _all_done(bool(diff < threshold) or i == max_iter - 1, x_full.device):
                break
            inv.cache.rewind(end - (start + exact))
        start = end
        bar.update(chunk)
        if stats is not None:
            stats.chunks += 1
    return start


def _sliding_window(inv: BlockInverse, start: int, target: int, block_size: int, threshold: float, max_iter: int,
                    later_frame_factor: int, stats: JacobiStats | None, bar) -> int:
    """Solve input positions [start, target) with a sliding window; returns target."""
    F, x_full = inv.frame_tokens, inv.x_full
    seen = start            # x_full[start + 1 .. seen] have a first estimate
    age = torch.zeros(inv.U + 1, dtype=torch.long)   # iterations each token has been through
    # over a draft every window reaches the target: the first checks the whole draft in one parallel pass (most
    # of it usually settles there, as in speculative decoding), and the tokens after one that did not are drafted
    # too, close enough for one more pass rather than windows of block_size (bench, measured with the draft stopped
    # at 10x the threshold, SamplerOptions.draft_th: 12 -> 9 float32 calls for a video, 23 -> 5 for an image)
    while start < target:
        adapt_threads()
        size = target - start if inv.initialised else (block_size if start <= F else block_size * later_frame_factor)
        end = min(start + size, target)
        if end > seen and F < inv.U and not inv.initialised:
            # video: a token entering the window starts from the same token's map one frame earlier
            q = torch.arange(seen + 1, end + 1)
            q = q[q > F]
            if q.numel():
                x_full[:, q] = inv.previous_frame_guess(q)
        seen = max(seen, end)
        new = inv.solve(inv.run(x_full[:, start:end], start), start, inv.guidance)   # x_full[start+1 : end+1]
        old = x_full[:, start + 1:end + 1]
        change = (new - old).square().mean((0, 2)) / new.square().mean()          # (n,) per token
        x_full[:, start + 1:end + 1] = new
        _count(stats, end - start)
        age[start + 1:end + 1] += 1
        settled = (change.cpu() < threshold) | (age[start + 1:end + 1] >= max_iter)
        # keep the keys of input `start` (exact) and of each following input that had settled, up to
        # the first that had not: the next run starts at the first input computed from kept ones
        k = 1 + int(settled[:-1].long().cumprod(0).sum())
        k = _agree_min(k, x_full.device)
        inv.cache.rewind(end - start - k)
        start += k
        bar.update(k)
        if stats is not None:
            stats.chunks += 1
    return start
