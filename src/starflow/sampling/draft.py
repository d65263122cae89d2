"""Low-precision drafts for Jacobi sampling.

A Jacobi solve spends most of its trunk calls getting from the first guess to the neighbourhood of
the fixed point; only the last evaluation of each token needs full precision. A bfloat16 copy of
the block (AMX on recent Xeons, tensor cores on GPUs: several times the float32 matmul rate) solves
the block first; the float32 Jacobi then starts from that draft, checks all of it in one parallel
pass, and accepts each token by its own float32 rule. Every token of the result is therefore a
float32 evaluation that moved by less than the threshold, exactly the acceptance of a plain float32
Jacobi solve; the draft changes where the iteration starts, not what it accepts.
"""
from __future__ import annotations

import copy

import torch

from ..flow.block import FlowBlock

__all__ = ["DRAFT_DTYPES", "draft_copy"]

DRAFT_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16}

_CACHE = "_starflow_draft"


def draft_copy(block: FlowBlock, draft: str) -> FlowBlock | None:
    """The block in the draft's precision, or None when there is no draft to make.

    None for draft "none", and for a block that already runs in a format no wider than the draft's
    (a bfloat16 model has nothing to gain from a bfloat16 draft). The copy is kept on the block and
    made again when any of its weights changes (load_state_dict, an optimiser step, `.to()`).
    """
    if draft not in DRAFT_DTYPES:
        raise ValueError(f"jacobi draft must be one of {sorted(DRAFT_DTYPES)}, not {draft!r}")
    dtype = DRAFT_DTYPES[draft]
    w = block.proj_in.weight
    if dtype is None or w.element_size() <= torch.empty((), dtype=dtype).element_size():
        return None
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in block.parameters())
    cached = block.__dict__.get(_CACHE)
    if cached is None or cached[0] != key:
        block.__dict__.pop(_CACHE, None)               # do not copy an old draft into the new one
        with torch.no_grad(), torch.inference_mode(False):
            low = copy.deepcopy(block).to(dtype)
        low.requires_grad_(False)
        cached = (key, low)
        # in __dict__, not as a submodule: invisible to state_dict, .parameters() and .to()
        block.__dict__[_CACHE] = cached
    low = cached[1]
    low.train(block.training)
    return low
