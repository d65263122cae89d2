"""Causal self-attention of a short sequence on a CPU, as a few batched float32 matrix products.

Why: SDPA's CPU flash kernel is made for long sequences. For the few hundred tokens of a small flow's
trunk (the bench model: batch 8, 4 heads, 272 tokens, head 64) it spends ~3x the arithmetic's time, forward
and backward. Products over blocks of queries, each against only the keys it may see (the blocks above the
diagonal are skipped, as flash skips them), run at the BLAS's speed; measured on a 2-core Zen 4, forward
+ backward 16.8 -> 13.5 ms per layer, forward alone 6.2 -> 4.5 ms (benchmarks/RESULTS.md). The numbers
are the same softmax(q k^T * scale) v up to float rounding (~1e-7).

On an Intel CPU (nn.hardware.intel_mkl) SDPA's flash kernel is the faster one in float32 and for bf16 without
gradients (measured on a 2-core Xeon with AMX, per layer: float32 forward 4.0 vs 4.7 ms, forward + backward
14.1 vs 15.4; bf16 forward 2.4 vs 5.3), and this path only pays under autocast training (bf16 forward +
backward 16.9 vs 19.4 ms): there only bf16 / fp16 inputs that need gradients take it.

The price is memory: autograd keeps each block's probabilities (about half of batch x heads x L x L floats)
for the backward, where flash keeps O(L). So only calls whose full score matrix stays under
`MAX_SCORE_BYTES` take this path; longer sequences, float64, GPUs, compiled graphs and code that pins SDPA's
kernels (`torch.nn.attention.sdpa_kernel`) keep SDPA.
"""
from __future__ import annotations

import math

import torch

from .hardware import intel_mkl

__all__ = ["blocked_causal_attention", "use_blocked_causal", "causal_mask", "additive_causal_mask", "MAX_SCORE_BYTES",
           "QUERY_BLOCK"]

MAX_SCORE_BYTES = 32 * 2**20     # batch x heads x L x L float32 scores of one call
QUERY_BLOCK = 128                # rows per block of queries (2-4 blocks measured alike at 272 tokens)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def causal_mask(L: int, prefix: int, device=None) -> torch.Tensor:
    """Bool mask (L, prefix + L) for L queries that follow `prefix` cached keys: query i sees keys <= prefix + i."""
    return torch.ones(L, prefix + L, dtype=torch.bool, device=device).tril(diagonal=prefix)


def additive_causal_mask(L: int, prefix: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The same as 0 / -inf to add to the scores (what SDPA would make of the bool mask on every call)."""
    allowed = causal_mask(L, prefix, device)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, -math.inf)


def use_blocked_causal(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether causal attention of q, k (B, H, L, d) should take `blocked_causal_attention`."""
    B, H, L, _ = q.shape
    return (q.device.type == "cpu" and q.dtype in _DTYPES and k.shape[1] == H and k.shape[2] == L and 1 < L
            and B * H * L * L * 4 <= MAX_SCORE_BYTES and not torch.compiler.is_compiling() and _sdpa_unpinned()
            and (not intel_mkl() or (q.dtype != torch.float32 and torch.is_grad_enabled() and q.requires_grad)))


def _sdpa_unpinned() -> bool:
    """False inside `torch.nn.attention.sdpa_kernel(...)` limiting SDPA to some kernels: who pins a kernel gets it."""
    b = torch.backends.cuda
    return b.flash_sdp_enabled() and b.math_sdp_enabled() and b.mem_efficient_sdp_enabled()


def blocked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v for q, k, v (B, H, L, d) -> (B, H, L, d), computed in float32
    (bf16 / fp16 inputs, e.g. under autocast, are upcast: more precise than SDPA's bf16 kernel, which rounds
    the probabilities to bf16, and still faster on a CPU) and returned in q's dtype."""
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    B, H, L, d = q.shape
    q3 = (q * scale).reshape(B * H, L, d)       # the scale on q: L x d products instead of L x L
    k3, v3 = k.reshape(B * H, L, d), v.reshape(B * H, L, d)
    blocks = math.ceil(L / QUERY_BLOCK)
    size = math.ceil(L / blocks)
    outs = []
    for i in range(0, L, size):
        e = min(i + size, L)
        # queries i..e-1 follow keys 0..i-1: query i + a sees keys <= i + a
        mask = additive_causal_mask(e - i, i, q.device, q.dtype)
        scores = torch.baddbmm(mask, q3[:, i:e], k3[:, :e].transpose(1, 2))   # (BH, e - i, e)
        outs.append(torch.bmm(scores.softmax(-1), v3[:, :e]))
    return torch.cat(outs, 1).view(B, H, L, d).to(dtype)
