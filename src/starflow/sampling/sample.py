"""Sampling a whole model: the deep block first (guided), then the shallow blocks back to data space."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import torch

from ..flow.block import IdentityFlowBlock
from ..flow.model import StarFlow
from ..nn.precision import upcast
from .draft import DRAFT_DTYPES, draft_copy
from .inverse import JACOBI_SCHEDULES, BlockInverse, JacobiStats, jacobi_inverse, sequential_inverse

__all__ = ["SamplerOptions", "sample", "NonFiniteSampleWarning"]


class NonFiniteSampleWarning(RuntimeWarning):
    """Some samples came out NaN or infinite: the flow's inverse overflowed for them."""


@dataclass
class SamplerOptions:
    method: str = "jacobi"                # "jacobi" or "sequential"
    guidance: float = 0.0                 # official CFG weight
    jacobi_block_size: int = 32
    jacobi_th: float = 1e-3               # relative squared change that stops a chunk; 0: never early
    jacobi_max_iter: int = 32
    jacobi_schedule: str = "official"     # "official" chunks, or "sliding" (per-token convergence, faster)
    jacobi_draft: str = "none"            # "bf16" / "auto": solve each block in bfloat16 first (sampling.draft)
    jacobi_draft_block_size: int = 0      # the draft's window (sliding schedule); 0: the whole sequence
    context_length: int | None = None     # long videos: frames of re-encoded context
    attn_temp: float = 1.0                # sequential only: attention temperature
    annealed_guidance: bool = False       # sequential only: guidance grows linearly over the tokens
    compile: bool = False                 # sequential only: each token step as one torch.compile'd graph
                                          # (nn.decode; compiles on first use, seconds per block)
    progress: bool = False

    def __post_init__(self):
        if self.method not in ("jacobi", "sequential"):
            raise ValueError(f"sampler must be 'jacobi' or 'sequential', not {self.method!r}")
        if self.jacobi_schedule not in JACOBI_SCHEDULES:
            raise ValueError(f"jacobi_schedule must be one of {JACOBI_SCHEDULES}, not {self.jacobi_schedule!r}")
        if self.guidance < 0:
            raise ValueError("guidance must be >= 0")
        if self.jacobi_draft not in DRAFT_DTYPES:
            raise ValueError(f"jacobi_draft must be one of {sorted(DRAFT_DTYPES)}, not {self.jacobi_draft!r}")
        if self.jacobi_draft_block_size < 0:
            raise ValueError("jacobi_draft_block_size must be >= 0 (0: the whole sequence)")


@torch.no_grad()
def sample(model: StarFlow, z: torch.Tensor, y: torch.Tensor | None = None, y_null: torch.Tensor | None = None,
           options: SamplerOptions | None = None, prefix: torch.Tensor | None = None,
           stats: JacobiStats | None = None, **kwargs) -> torch.Tensor:
    """Invert the flow on noise z (B, C, H, W) or (B, T, C, H, W).

    y: (B, L, txt_dim) condition; y_null: the unconditional embedding, needed when guidance > 0.
    prefix: (B, k, C, H, W) known first frames (image-to-video), returned unchanged.
    Keyword arguments override fields of `options`.
    """
    opt = options or SamplerOptions()
    if kwargs:
        opt = SamplerOptions(**{**opt.__dict__, **kwargs})
    c = model.config
    model.check_input(z, y, name="z")
    video = z.dim() == 5
    B = z.size(0)
    w = opt.guidance
    if w > 0 and c.txt_dim > 0:
        if y_null is None:
            raise ValueError("guidance > 0 needs y_null, the embedding of the empty prompt / null label")
        if y_null.shape != y.shape:
            raise ValueError(f"y_null shape {tuple(y_null.shape)} differs from y shape {tuple(y.shape)}")
        y_cfg = torch.cat([y, y_null])
    else:
        w, y_cfg = 0.0, y
    if prefix is not None:
        if not video or prefix.dim() != 5 or prefix.shape[0] != B or prefix.shape[2:] != z.shape[2:]:
            raise ValueError(f"prefix must be (B, k, C, H, W) frames matching z {tuple(z.shape)}, "
                             f"got {tuple(prefix.shape)}")
        if prefix.size(1) >= z.size(1):
            raise ValueError("prefix must have fewer frames than the video to generate")
        model.check_input(prefix, y, name="prefix")
        prefix_inputs = model(prefix, y).block_outputs      # each block's input for the known frames
    h = model.patchify(z)
    shape = h.shape
    T = shape[1] if video else 1
    gh, gw, ch = shape[-3], shape[-2], shape[-1]
    tokens = upcast(h.reshape(B, -1, ch))
    nb = len(model.blocks)
    for i in reversed(range(nb)):
        block = model.blocks[i]
        if isinstance(block, IdentityFlowBlock):
            continue
        deep = i == nb - 1
        guided = w > 0 and (deep or not c.cond_top_only)
        text = (y_cfg if guided else y) if block.conditioned else None
        local = video and c.shallow_block_local and not deep
        if local:
            tok, frames, rope_frames, pre = tokens.reshape(B * T, -1, ch), 1, 1, None
        else:
            tok, frames, rope_frames = tokens, T, (T if video else 0)
            pre = prefix_inputs[i].reshape(B, -1, ch) if prefix is not None else None
        rope = model.rope_tables(block, gh, gw, rope_frames, text.size(1) if text is not None else 0, z.device)
        window = c.local_attn_window if (deep and video and opt.method == "jacobi") else None
        # the same inputs for the block and for a low-precision copy of it (a Jacobi draft)
        inverse = partial(BlockInverse, z=tok, text=text, rope=rope, frames=frames, guidance=w if guided else 0.0,
                          prefix=pre, window_frames=window)
        inv = inverse(block)
        if opt.method == "sequential":
            out = sequential_inverse(inv, opt.attn_temp, opt.annealed_guidance, opt.progress, opt.compile)
        else:
            low = draft_copy(block, opt.jacobi_draft)
            if low is not None:
                draft, ds = inverse(low), JacobiStats()
                # large windows: a low-precision trunk call costs little per token, much per call
                jacobi_inverse(draft, opt.jacobi_draft_block_size or draft.U, opt.jacobi_th, opt.jacobi_max_iter,
                               opt.context_length, window, progress=opt.progress, stats=ds, schedule="sliding")
                inv.start_from(draft)
                if stats is not None:
                    stats.draft_iterations += ds.iterations
                    stats.draft_tokens += ds.tokens
            out = jacobi_inverse(inv, opt.jacobi_block_size, opt.jacobi_th, opt.jacobi_max_iter,
                                 opt.context_length, window, progress=opt.progress, stats=stats,
                                 schedule=opt.jacobi_schedule)
        tokens = out.reshape(B, -1, ch)
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
