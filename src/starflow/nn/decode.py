"""One-token steps of a trunk as one compiled graph (torch.compile, inductor).

The sequential sampler calls the trunk once per token with a handful of rows: on a CPU the time then
goes into per-operator overhead (dispatch, Python, ~1000 small ATen calls per deep-block step) rather
than arithmetic. `CompiledStep` runs the very same `Trunk.run`, traced by torch.compile with fixed
shapes (a `StaticSlot` over the KV cache, a mask over its whole capacity), so the step becomes one
generated C++ function with fused element-wise work. Numbers differ from the eager step only by float
rounding (the order of sums inside fused kernels).

Compiling takes seconds per block (once per trunk, batch and cache size; dynamo keeps the graphs with
Trunk.run's code, so a later sampler reuses them). Freezing the weights into the graph (inductor's
`freezing`) measured a few % faster still, but a frozen graph keeps serving old weights after an
in-place update (dynamo only guards the parameters' identity), so weights stay inputs.
"""
from __future__ import annotations

import math

import torch

from .kv_cache import KVCache, StaticSlot
from .trunk import Trunk

__all__ = ["CompiledStep"]

# Every trunk shares the code of Trunk.run, and dynamo's default limit of graphs per code object (8)
# would send a model with many blocks, batch sizes or cache sizes back to eager mode. The limit is raised
# only while a step runs (config.patch), not for the rest of the process.
_GRAPHS_PER_CODE = 64


class CompiledStep:
    """Steps of one token each, continuing `cache` (already holding the text and any prefix)."""

    def __init__(self, trunk: Trunk, cache: KVCache, dtype: torch.dtype):
        self.trunk, self.cache = trunk, cache
        dev = cache.device
        self.where = torch.zeros(1, dtype=torch.long, device=dev)
        self.slot = StaticSlot(cache, self.where)
        self.mask = torch.full((1, cache.capacity), -math.inf, dtype=dtype, device=dev)   # (1, capacity)
        self.mask[:, :cache.pos] = 0
        for t in cache.k + cache.v:   # masked entries are still multiplied by 0: they must not hold NaN garbage
            t[:, :, cache.pos:].zero_()
        self.run = torch.compile(Trunk.run, fullgraph=True, dynamic=False)
        import torch._inductor.config as inductor_config   # imported on first use: it is slow to import
        dynamo_config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        # cpp_wrapper: the generated graph is called from C++, not Python (read when a call compiles)
        self._patches = (inductor_config.patch(cpp_wrapper=True),
                         dynamo_config.patch(**{limit: max(getattr(dynamo_config, limit), _GRAPHS_PER_CODE)}))

    def __call__(self, x: torch.Tensor, rope_rows: tuple[torch.Tensor, torch.Tensor] | None,
                 pos_embed: torch.Tensor | None = None, attn_temp: float = 1.0) -> torch.Tensor:
        """x (B, 1, C_in) at cache position cache.pos; rope_rows: that position's (cos, sin) rows (1, head_dim)."""
        p = self.cache.pos
        self.where.fill_(p)
        self.mask[:, p] = 0
        with self._patches[0], self._patches[1]:
            out = self.run(self.trunk, x.contiguous(), None, rope=rope_rows, cache=self.slot, pos_embed=pos_embed,
                           attn_mask=self.mask, attn_temp=attn_temp)
        self.cache.advance(1)
        return out
