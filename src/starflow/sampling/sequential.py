"""The sequential sampler: one token at a time with the KV cache, exact."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._cpu import adapt_threads
from ..nn.decode import CompiledStep
from .inverse import BlockInverse, first_target, slide_window, window_tokens

__all__ = ["sequential_inverse"]


def sequential_inverse(inv: BlockInverse, attn_temp: float = 1.0, annealed_guidance: bool = False,
                       progress: bool = False, compiled: bool = False, context_frames: int | None = None,
                       window_frames: int | None = None) -> torch.Tensor:
    """Token by token with the KV cache: exact, U trunk calls of one token.

    compiled: each step is one torch.compile'd graph of the same trunk (nn.decode.CompiledStep).
    window_frames: attention sees at most that many frames; when the window is full the cache is rebuilt
    from the text and the last `context_frames` frames, as `jacobi_inverse` does, so that both samplers
    solve the same equations (a Jacobi solve without early stop gives this sample).
    """
    W, C = window_tokens(inv, context_frames, window_frames)
    target = first_target(inv, W)
    steps = range(inv.start, inv.U)
    step = _CompiledRun(inv) if compiled and len(steps) else None
    for p in tqdm(steps, disable=not progress, desc="sequential", leave=False):
        adapt_threads()     # the cores other processes leave free (starflow._cpu): a cheap look, once a second at most
        if p >= target:
            target = slide_window(inv, p, target, W, C)
            if step is not None:
                inv.flush()
                step.sync()
        w = inv.guidance * ((p + 1) / inv.U if annealed_guidance else 1.0)
        raw = (step or inv.run)(inv.x_full[:, p:p + 1], p, attn_temp)
        inv.x_full[:, p + 1:p + 2] = inv.solve(raw, p, w)
    return inv.result()


class _CompiledRun:
    """inv.run for one token at a time, through a compiled step continuing inv's cache."""

    def __init__(self, inv: BlockInverse):
        self.inv = inv
        self.step = CompiledStep(inv.block, inv.cache, inv.block.proj_in.weight.dtype)

    def sync(self) -> None:
        """After the cache was rebuilt outside the compiled step (the sliding window)."""
        self.step.sync()

    def __call__(self, inp: torch.Tensor, p: int, attn_temp: float = 1.0) -> torch.Tensor:
        inv = self.inv
        q = inv.cache.pos          # the step's cache position: its RoPE row
        rows = (inv.rope[0][q:q + 1].clone(), inv.rope[1][q:q + 1].clone()) if inv.rope is not None else None
        r = p - inv.shift          # its position in the (re-encoded) sequence: its learned position
        pe = inv.pos[r:r + 1].clone() if inv.pos is not None else None
        return self.step(inp, rows, pe, attn_temp)
