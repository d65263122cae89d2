"""Sampling a whole model: the deep block first (guided), then the shallow blocks back to data space."""
from __future__ import annotations

import contextlib
import dataclasses
import warnings

import torch

from ..flow.model import BlockView, StarFlow
from ..nn.packed import packed_linears
from ..nn.precision import layers_compute_in, upcast
from ..nn.weight_cache import one_call
from .draft import draft_copy, native_bf16
from .inverse import BlockInverse
from .jacobi import JacobiStats, block_tokens, jacobi_inverse
from .sequential import sequential_inverse
from .options import SamplerOptions

__all__ = ["SamplerOptions", "sample", "NonFiniteSampleWarning"]


class NonFiniteSampleWarning(RuntimeWarning):
    """Some samples came out NaN or infinite: the flow's inverse overflowed for them."""


def _check_condition(model: StarFlow, y, y_null, guidance: float) -> float:
    """The guidance weight that applies (0 for an unconditional model); checks y_null against y."""
    if guidance > 0 and model.config.txt_dim > 0:
        if y_null is None:
            raise ValueError("guidance > 0 needs y_null, the embedding of the empty prompt / null label")
        if y_null.shape != y.shape:
            raise ValueError(f"y_null shape {tuple(y_null.shape)} differs from y shape {tuple(y.shape)}")
        return guidance
    return 0.0


def _prefix_inputs(model: StarFlow, z: torch.Tensor, y, prefix: torch.Tensor) -> list[torch.Tensor]:
    """Each block's input for the known first frames (image-to-video), from one likelihood pass."""
    if z.dim() != 5 or prefix.dim() != 5 or prefix.shape[0] != z.size(0) or prefix.shape[2:] != z.shape[2:]:
        raise ValueError(f"prefix must be (B, k, C, H, W) frames matching z {tuple(z.shape)}, "
                         f"got {tuple(prefix.shape)}")
    if prefix.size(1) >= z.size(1):
        raise ValueError("prefix must have fewer frames than the video to generate")
    model.check_input(prefix, y, name="prefix")
    return model(prefix, y).block_outputs


def _invert_block(view: BlockView, tokens: torch.Tensor, opt: SamplerOptions, prefix: torch.Tensor | None,
                  window: int | None, stats: JacobiStats | None, pack: bool) -> torch.Tensor:
    """One block's inverse on its tokens (B', N', C): sequential, or Jacobi (after a low-precision draft).
    pack: the Linear layers multiply from weights packed once for the call (nn.packed: the BLAS would re-pack
    them on each of the sampler's many small trunk calls)."""
    # the draft is a copy of the plain block: made before its layers are packed
    low = draft_copy(view.block, opt.jacobi_draft) if opt.method == "jacobi" else None
    with packed_linears(view.block, pack):
        inv = BlockInverse(view, tokens, prefix, window)
        if opt.method == "sequential":
            return sequential_inverse(inv, opt.attn_temp, opt.annealed_guidance, opt.progress, opt.compile,
                                      opt.context_length, window)
        if low is not None:
            # the same inputs for a low-precision copy of the block, solved first
            with packed_linears(low, pack):
                draft, ds = BlockInverse(dataclasses.replace(view, block=low), tokens, prefix, window), JacobiStats()
                # large windows: a low-precision trunk call costs little per token, much per call
                # (its window slides keep the context's entries: BlockInverse.slide)
                jacobi_inverse(draft, opt.jacobi_draft_block_size or draft.U, opt.draft_th, opt.jacobi_max_iter,
                               opt.context_length, window, progress=opt.progress, stats=ds, schedule="sliding",
                               reencode=False)
            inv.start_from(draft)
            if stats is not None:
                stats.draft_iterations += ds.iterations
                stats.draft_tokens += ds.tokens
        return jacobi_inverse(inv, block_tokens(opt, inv), opt.jacobi_th, opt.jacobi_max_iter,
                              opt.context_length, window, progress=opt.progress, stats=stats,
                              schedule=opt.jacobi_schedule)


def _compute_precision(model: StarFlow, opt: SamplerOptions) -> tuple[contextlib.AbstractContextManager, bool]:
    """(context, pack). bf16 / fp16 weights on a CPU without native bf16 matmuls (AVX2, AVX-512 without BF16): each
    transformer layer computes in float32 (its weights converted one layer at a time,
    nn.precision.layers_compute_in), several times faster there than emulated bf16 products, at half the
    memory of a float32 model. Otherwise the weights stay as stored and are packed (nn.packed). Compiled
    sequential steps get neither (a traced graph cannot swap weights in hooks; inductor makes its own kernels)."""
    w = next(model.parameters())
    if opt.method == "sequential" and opt.compile:
        return contextlib.nullcontext(), False
    if w.dtype in (torch.bfloat16, torch.float16) and w.device.type == "cpu" and not native_bf16(w.device):
        return layers_compute_in(model, torch.float32), False
    return contextlib.nullcontext(), True


@torch.no_grad()
def sample(model: StarFlow, z: torch.Tensor, y: torch.Tensor | None = None, y_null: torch.Tensor | None = None,
           options: SamplerOptions | None = None, prefix: torch.Tensor | None = None,
           stats: JacobiStats | None = None, **changes) -> torch.Tensor:
    """Invert the flow on noise z (B, C, H, W) or (B, T, C, H, W).

    y: (B, L, txt_dim) condition; y_null: the unconditional embedding, needed when guidance > 0.
    prefix: (B, k, C, H, W) known first frames (image-to-video), returned unchanged.
    Keyword arguments change fields of `options` (SamplerOptions field names).
    """
    opt = (options or SamplerOptions()).with_(**changes) if changes else (options or SamplerOptions())
    c = model.config
    model.check_input(z, y, name="z")
    w = _check_condition(model, y, y_null, opt.guidance)
    prefix_inputs = _prefix_inputs(model, z, y, prefix) if prefix is not None else None
    # the deep block's attention window in latent frames (the sampler's setting, else the model's own), slid
    # past its end as the official long-video (Jacobi) sampler does; the sequential sampler solves the same
    # equations token by token
    window = (opt.attn_window or c.local_attn_window) if z.dim() == 5 else None
    if window and z.size(1) > window and not c.shallow_block_local:
        raise ValueError(f"a {z.size(1)}-frame video with an attention window of {window} frames needs a model "
                         f"whose shallow blocks see one frame at a time (shallow_block_local)")
    h = model.patchify(z)
    shape = h.shape
    B, ch = shape[0], shape[-1]
    tokens = upcast(h.reshape(B, -1, ch))
    compute, pack = _compute_precision(model, opt)
    # one_call: the kept drafts and packed weights (nn.weight_cache) read each weight's sum once for the call
    with compute, one_call():
        for v in reversed(model.block_views(shape, y, w, y_null=y_null, sampling=True)):
            if v.identity:
                continue
            pre = prefix_inputs[v.index].reshape(B, -1, ch) if prefix_inputs is not None and not v.local else None
            out = _invert_block(v, v.to_block(tokens), opt, pre, window if v.deep else None, stats, pack)
            tokens = v.from_block(out)
    x = model.unpatchify(tokens.reshape(shape)).to(z.dtype)
    if prefix is not None:
        x[:, :prefix.size(1)] = prefix
    bad = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
    if bad:
        # the inverse multiplies by exp(scale) token after token: a model whose scales grow large (little
        # training, no soft_clip, strong guidance) can overflow. The other samples are still good: say so
        # instead of failing the batch (the denoisers pass such samples through untouched).
        warnings.warn(f"{bad} of {B} samples contain NaN or infinite values: the flow's inverse overflowed for "
                      f"them (lower guidance, more training or a model with soft_clip usually avoid it)",
                      NonFiniteSampleWarning, stacklevel=3)   # 3: past torch.no_grad's wrapper
    return x
