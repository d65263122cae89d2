"""Low-precision drafts for Jacobi sampling.

A Jacobi solve spends most of its trunk calls getting from the first guess to the neighbourhood of
the fixed point; only the last evaluation of each token needs full precision. A bfloat16 copy of
the block (AMX on recent Xeons, tensor cores on GPUs: several times the float32 matmul rate) solves
the block first; the float32 Jacobi then starts from that draft, checks all of it in one parallel
pass, and accepts each token by its own float32 rule. Every token of the result is therefore a
float32 evaluation that moved by less than the threshold, exactly the acceptance of a plain float32
Jacobi solve; the draft changes where the iteration starts, not what it accepts. The draft stops at 3x
the sampler's threshold (SamplerOptions.draft_th): close enough that the full-precision check usually accepts
every token in its first pass, where a token at the edge would make the rest of its window run again at full
precision (options.DRAFT_TH_FACTOR).
"""
from __future__ import annotations

import copy
from typing import TypeVar

import torch

from ..flow.block import FlowBlock
from ..nn.hardware import cpu_has
from ..nn.weight_cache import cached, freeze

__all__ = ["DRAFT_DTYPES", "draft_copy", "fast_bf16", "low_copy", "native_bf16", "no_wider"]

M = TypeVar("M", bound=torch.nn.Module)

# "auto": bf16 where the hardware multiplies bf16 natively (see fast_bf16), else no draft
DRAFT_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "auto": torch.bfloat16}


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run several times faster than float32 here, enough for a bf16 draft to pay: a CUDA GPU
    with bf16 support, or a CPU with AMX tiles.

    Elsewhere a draft costs more than it saves: AVX2 emulates bf16, and AVX-512 BF16 (native_bf16) is ~1.8x.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has("_is_amx_tile_supported")
    return False


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here at all, i.e. faster than float32 ones: fast_bf16's hardware, or a
    CPU with AVX-512 BF16 dot products (AMD Zen 4, Intel Cooper Lake). There a bf16 model computes as stored
    (sampling.sample); the draft still needs fast_bf16. Measured on a 2-core Zen 4: bf16 products at ~1.8x the
    float32 rate, a bf16 copy of the bench model sampled 2.25x faster in bf16 than with its layers converted to
    float32, while a bf16 draft did not pay for itself (benchmarks/RESULTS.md)."""
    if fast_bf16(device):
        return True
    return device.type == "cpu" and cpu_has("_is_avx512_bf16_supported")


def draft_copy(block: FlowBlock, draft: str) -> FlowBlock | None:
    """A copy of the block in the draft's precision, or None when there is no draft to make.

    None for draft "none", for "auto" on hardware without native bf16 matmuls, and for a block that
    already runs in a format no wider than the draft's (a bfloat16 model gains nothing from a bf16
    draft). The copy is kept for later calls while the block's tensors stay the same (nn.weight_cache: nothing
    is stored on the block, and any change to its weights makes a new copy); callers must not change it.
    """
    if draft not in DRAFT_DTYPES:
        raise ValueError(f"jacobi draft must be one of {sorted(DRAFT_DTYPES)}, not {draft!r}")
    dtype = DRAFT_DTYPES[draft]
    w = block.proj_in.weight
    if dtype is None or no_wider(w, dtype):
        return None
    if draft == "auto" and not fast_bf16(w.device):
        return None
    return low_copy(block, dtype)


def no_wider(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `t` is stored in a format no wider than `dtype`: a low-precision copy of it would gain nothing."""
    return t.element_size() <= dtype.itemsize


def low_copy(module: M, dtype: torch.dtype) -> M:
    """A copy of `module` with its floating tensors in `dtype`, gradients off, kept for later calls while the
    module's tensors stay the same (nn.weight_cache); callers must not change it. The draft blocks' copies, and the
    learnable denoiser's where it runs in bf16 (sampling.denoise)."""
    sources = [*module.parameters(), *module.buffers()]
    return cached(module, f"draft:{dtype}:{'train' if module.training else 'eval'}", sources,
                  lambda: _low_copy(module, dtype))


def _low_copy(block: M, dtype: torch.dtype) -> tuple[M, int]:
    with torch.no_grad(), torch.inference_mode(False):
        # each floating tensor converted straight into the copy (deepcopy takes the memo's entries) rather than
        # copied in full precision first and converted after: 23 -> 16 ms for the bench video model's deep block
        memo = {}
        for t in (*block.parameters(), *block.buffers()):
            if t.is_floating_point():
                low_t = t.detach().to(dtype)
                memo[id(t)] = torch.nn.Parameter(low_t, requires_grad=False) if isinstance(t, torch.nn.Parameter) \
                    else low_t
        low = copy.deepcopy(block, memo).to(dtype)
    low = low.requires_grad_(False).train(block.training)
    freeze([*low.parameters(), *low.buffers()])     # nothing writes the copy: its packed layers' stamps need no sums
    return low, sum(t.untyped_storage().nbytes() for t in (*low.parameters(), *low.buffers()))
