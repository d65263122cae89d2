"""Linear layers with their weights packed once, for inference on a CPU (oneDNN).

Why: a plain `torch.nn.Linear` call on a CPU hands its weight to the BLAS (MKL), which copies it into its
blocked layout on every call. A sampler calls the same layers hundreds of times with a few rows each (a
sequential step, a Jacobi window), so that copy is a large part of each call. oneDNN can keep the weight in
its own blocked layout (`_reorder_linear_weight`) and multiply from it directly. Measured on a 2-core AMD
EPYC (Zen 4) with float32 256 -> 1024 layers: 60 -> 31 us at 4 rows, 126 -> 97 us at 32, 695 -> 611 us at
256, 5.9 -> 4.9 ms at 2048 (benchmarks/RESULTS.md). The products are float32 throughout; only the order
of the sums inside a dot product differs from the BLAS (differences ~1e-7 relative).

`packed_linears(module)` swaps the forward of every CPU Linear under `module` for the packed product while
the context is open, and restores them on exit. Only without gradients (the packed op has no backward) and
only where oneDNN is built in; otherwise it changes nothing. The weights must not change inside the context.
The packed copies are kept between contexts while the weights stay the same (nn.weight_cache): a sampler's calls
pack each weight once, not once a call.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from .hardware import intel_mkl
from .weight_cache import cached

__all__ = ["packed_linears", "packing_available", "linear_then", "POST_OPS"]

_DTYPES = (torch.float32, torch.bfloat16)
# The packed copies live beside the weights while the context is open. Above this many bytes of weights under
# one context (a block of a multi-billion-parameter model), that copy would cost more memory than the re-packing
# costs time, and big models are held to a peak of ~1.2x their weights (benchmarks/big_model.py): none is made.
PACK_BUDGET_BYTES = 512 * 2**20
# On an Intel CPU MKL's own float32 product is the faster one below this many rows (nn.hardware; measured on a
# 2-core Xeon, 256 -> 1024: 19 vs 42 us at 2 rows, 44 vs 52 at 8, 108 vs 99 at 16; bf16 packed is faster at all)
MKL_SMALL_ROWS = 16
# sampling calls from several threads (a served app) may share a model: swaps and restores take turns
_LOCK = threading.Lock()


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops (CPU builds normally do)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
                and hasattr(ops, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def _pack(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    # an ordinary tensor even when first packed under inference_mode: it is kept for later calls (nn.weight_cache)
    with torch.inference_mode(False), torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    return packed, weight.numel() * weight.element_size()      # an opaque oneDNN tensor: about the weight's size


class _PackedForward:
    """Linear.forward from a packed weight; any other input (a dtype the weight was not packed for, a
    tensor that needs gradients) takes the layer's own product."""

    def __init__(self, layer: torch.nn.Linear):
        self.layer = layer
        self.weight = cached(layer, "packed", [layer.weight], lambda: _pack(layer.weight))
        self.bias = layer.bias.detach() if layer.bias is not None else None
        self.small_rows_to_blas = layer.weight.dtype == torch.float32 and intel_mkl()

    def packs(self, x: torch.Tensor) -> bool:
        """Whether a call on x multiplies from the packed weight (else the layer's own product)."""
        return not (x.dtype != self.weight.dtype or x.device.type != "cpu"
                    or (torch.is_grad_enabled() and x.requires_grad)
                    or (self.small_rows_to_blas and x.numel() < MKL_SMALL_ROWS * x.shape[-1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packs(x):
            return torch.nn.functional.linear(x, self.layer.weight, self.layer.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


# what may follow a Linear inside one oneDNN call (linear_then)
POST_OPS = ("gelu", "add", "mul")


def linear_then(layer: torch.nn.Linear, x: torch.Tensor, post: str, other: torch.Tensor | None = None,
                approximate: str = "none") -> torch.Tensor:
    """layer(x) followed by `post`: "gelu" (with `approximate`), "add" (+ other) or "mul" (* other).

    Where packed_linears has packed the layer, one oneDNN call does both: the element-wise step runs on the
    product while it is still in cache, instead of a second pass over memory (a transformer layer's GELU and its
    two residual additions: measured on a 2-core Xeon, a bf16 MLP with its residual at 256 rows 386 -> 325 us,
    float32 at 1024 rows 8.8 -> 5.3 ms). Elsewhere (training, no oneDNN, a wrapped weight) the same steps run one
    after the other. In float32 the fused and the plain results are the same bits for GELU (erf), + and * (each
    an exactly rounded float32 operation on the same operands); the tanh GELU differs by ~1 ulp. In bf16 the
    fused GELU reads the float32 product before rounding: closer to exact, not equal to the plain steps."""
    if post not in POST_OPS:
        raise ValueError(f"post must be one of {POST_OPS}, not {post!r}")
    if post != "gelu" and other is None:
        raise ValueError(f"post {post!r} needs the other operand")
    fwd = layer.forward
    if isinstance(fwd, _PackedForward) and fwd.packs(x) and (
            other is None or (other.dtype == x.dtype and other.shape == x.shape[:-1] + (layer.out_features,))):
        if post == "gelu":
            return torch.ops.mkldnn._linear_pointwise(x, fwd.weight, fwd.bias, "gelu", [], approximate)
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, fwd.weight, fwd.bias, post)
    y = layer(x)
    if post == "gelu":
        return torch.nn.functional.gelu(y, approximate=approximate)
    return other + y if post == "add" else y * other


def _packable(layer: torch.nn.Module) -> bool:
    w = getattr(layer, "weight", None)
    # plain strided CPU tensors only: a sharded (DTensor) or otherwise wrapped weight keeps its own product
    return (type(layer) is torch.nn.Linear and "forward" not in layer.__dict__ and w is not None
            and type(w.data) is torch.Tensor and w.layout == torch.strided and w.device.type == "cpu"
            and w.dtype in _DTYPES and w.dim() == 2 and w.numel() > 0)


@contextlib.contextmanager
def packed_linears(module: torch.nn.Module, enabled: bool = True, max_bytes: int | None = None,
                   single_pass: bool = False) -> Iterator[int]:
    """Pack the weights of `module`'s CPU Linear layers for the duration of the context (yields how many).

    Gradients must be off inside (torch.no_grad / inference_mode): a call that needs them falls back to
    the plain product. Layers already packed by an enclosing context are left to it. Nothing is packed when
    the layers hold more than `max_bytes` (default PACK_BUDGET_BYTES) of weights: the copies would double them.
    single_pass: each layer runs once inside (a likelihood pass), so packing pays only where the BLAS would
    re-pack on that call anyway; MKL on an Intel CPU multiplies float32 as fast without (measured on a Xeon:
    the packing was ~8% of a bench-model forward, the products equal), so float32 layers are left alone there."""
    swapped: list[torch.nn.Linear] = []
    budget = PACK_BUDGET_BYTES if max_bytes is None else max_bytes
    try:
        if enabled and not torch.is_grad_enabled() and packing_available():
            with _LOCK:
                layers = [m for m in module.modules() if _packable(m)
                          and not (single_pass and m.weight.dtype == torch.float32 and intel_mkl())]
                if sum(m.weight.numel() * m.weight.element_size() for m in layers) > budget:
                    layers = []
                for layer in layers:
                    try:
                        layer.forward = _PackedForward(layer)
                    except RuntimeError:       # a weight oneDNN will not pack: the plain product serves
                        continue
                    swapped.append(layer)
        yield len(swapped)
    finally:
        with _LOCK:
            for layer in swapped:
                # a context of another thread may use it still: it then takes the plain product (same numbers)
                layer.__dict__.pop("forward", None)
