"""Precision policy: numerically sensitive steps run in float32 (as the official code), or float64 if given.

`layers_compute_in` runs transformer layers stored in a low precision (bf16) in float32, one layer at a time:
on a CPU without native bf16 matmuls (AVX2, plain AVX-512) a bf16 matrix product is emulated and runs ~10x
slower than a float32 one, so a bf16 checkpoint is best kept in bf16 (half the memory) and computed in float32.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["upcast", "layers_compute_in"]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bf16/float32 inputs; float64 stays float64 (tests check exactness in float64)."""
    return x if x.dtype == torch.float64 else x.float()


@contextlib.contextmanager
def layers_compute_in(module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[int]:
    """While the block runs, every TransformerLayer of `module` whose weights are stored in another dtype
    computes in `dtype`: on entry its parameters are converted (a temporary copy of that one layer, so memory
    grows by one layer, not by the model) and its input cast; on exit the stored parameters are back and the
    output has the input's dtype again. The stored weights are never modified. Yields the number of layers."""
    from .layers import TransformerLayer   # layers imports this module

    layers = [m for m in module.modules() if isinstance(m, TransformerLayer)
              and any(p.dtype != dtype for p in m.parameters())]
    stored: dict[int, tuple[list[tuple[torch.nn.Parameter, torch.Tensor]], torch.dtype]] = {}
    # the converted weights go into buffers kept for the whole block and shared by the layers (they run one
    # after the other): fresh memory for every layer call would cost a page fault per page, which on some
    # hosts (virtual machines) costs more than the conversion itself
    scratch: dict[tuple, torch.Tensor] = {}

    def converted(data: torch.Tensor, i: int) -> torch.Tensor:
        if torch.is_grad_enabled():          # autograd may keep the weights: no sharing then
            return data.to(dtype)
        key = (i, tuple(data.shape), data.device)
        buf = scratch.get(key)
        if buf is None:
            buf = scratch[key] = torch.empty(data.shape, dtype=dtype, device=data.device)
        return buf.copy_(data)

    def enter(layer, args, kwargs):
        x = args[0]
        params = [(p, p.data) for p in layer.parameters()]
        stored[id(layer)] = (params, x.dtype)
        for i, (p, data) in enumerate(params):
            p.data = converted(data, i)
        return (x.to(dtype), *args[1:]), kwargs

    def leave(layer, args, kwargs, out):
        params, x_dtype = stored.pop(id(layer), ([], None))
        for p, data in params:
            p.data = data
        return out if x_dtype is None or out is None else out.to(x_dtype)   # None: the layer raised

    handles = []
    try:
        for layer in layers:
            handles.append(layer.register_forward_pre_hook(enter, with_kwargs=True))
            # always_call: the stored weights come back even when the layer raises
            handles.append(layer.register_forward_hook(leave, with_kwargs=True, always_call=True))
        yield len(layers)
    finally:
        for h in handles:
            h.remove()
