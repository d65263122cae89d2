"""Training-free inpainting and editing with the flow's exact inverse.

A flow is one invertible map x <-> z, so an image has exactly one noise `encode(x)` (one likelihood pass,
under the same guidance as the sampler: `sample(encode(x)) == x`), and everything here works on that noise:

- **editing**: encode under the source prompt, move the noise by `strength` towards fresh noise (on a
  circle, so it stays a standard normal draw), sample under the new prompt; a mask limits the change.
- **inpainting** (`method="resample"`, the STARFlow paper's use of the inverse): fill the hole with a
  sample, then repeat: encode, draw fresh noise where the hole is (less and less of it: `schedule`),
  sample, put the known pixels back. Each round conditions the hole on the known region through the
  model's own autoregressive predictions; the known pixels are never changed.
- `method="exact"`: where the known region is a prefix of the deep block's token order and the shallow
  blocks see it alone (the first frames of a video, through frame-local shallow blocks; any prefix of a
  model without shallow blocks), the conditional is sampled exactly through the KV cache, in one pass.
  `exact_prefix_frames` / `exact_prefix_tokens` say when that holds; "auto" uses it there.

Masks are True where content is to be made, in the model's input space (B or 1, [T,] 1 or C, H, W).
"""
from __future__ import annotations

import math

import torch

from ..flow.model import StarFlow
from .options import SamplerOptions
from .sample import sample

__all__ = ["encode", "edit_noise", "inpaint", "exact_prefix_tokens", "INPAINT_METHODS"]

INPAINT_METHODS = ("auto", "resample", "exact")


@torch.no_grad()
def encode(model: StarFlow, x: torch.Tensor, y: torch.Tensor | None = None, y_null: torch.Tensor | None = None,
           guidance: float = 0.0) -> torch.Tensor:
    """The noise z with `sample(model, z, y, y_null, guidance=guidance)` == x: the exact inverse of the
    sampler, one likelihood pass. Each block runs forward with the guidance the sampler gives it (every
    block that reads text, as `StarFlow.block_views(sampling=True)` says)."""
    model.check_input(x, y)
    if guidance > 0 and model.config.txt_dim > 0 and y_null is None:
        raise ValueError("guidance > 0 needs y_null, the embedding of the empty prompt / null label")
    if model.config.txt_dim == 0:
        guidance = 0.0
    h = model.patchify(x)
    shape = h.shape
    tokens = h.reshape(shape[0], -1, shape[-1])
    for v in model.block_views(shape, y, guidance, y_null=y_null, sampling=True):
        t = v.to_block(tokens)
        if v.guidance > 0:    # the guided parameters come from [cond; uncond] on the same tokens
            z, _ = v.block(torch.cat([t, t]), v.text, v.rope, v.frames, v.guidance)
            z = z.chunk(2)[0]
        else:
            z, _ = v.block(t, v.text, v.rope, v.frames, 0.0)
        tokens = v.from_block(z)
    return model.unpatchify(tokens.reshape(shape)).to(x.dtype)


def edit_noise(z: torch.Tensor, strength: float, generator: torch.Generator | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """cos(a) z + sin(a) eps with a = strength * pi / 2 (strength 0: z itself, 1: fresh noise): a standard
    normal draw for any strength. With `mask`, only where the mask is True."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0:
        return z
    eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z)
    a = strength * math.pi / 2
    moved = math.cos(a) * z + math.sin(a) * eps
    return moved if mask is None else torch.where(mask.to(torch.bool).expand_as(z), moved, z)


def _determined_tokens(model: StarFlow, known: torch.Tensor, frames: int, gh: int, gw: int) -> torch.Tensor:
    """For tokens (N,) known in data space: which deep-block input tokens depend on known ones only.

    A block of order `identity` makes token t from tokens <= t, `flip` from tokens >= t, and
    `flip_in_frame` the same within each frame; a frame-local shallow block sees one frame."""
    det = known.clone()
    c = model.config
    shape = (1, frames, gh, gw, c.token_channels) if frames > 1 or c.is_video_model else (1, gh, gw, c.token_channels)
    for v in model.block_views(torch.Size(shape), sampling=True)[:-1]:
        if v.identity:
            continue
        seq = det.reshape(frames, -1) if v.local or v.block.order == "flip_in_frame" else det[None]
        if v.block.order in ("flip", "flip_in_frame"):
            seq = seq.flip(-1).cummin(-1).values.flip(-1)
        else:
            seq = seq.cummin(-1).values
        det = seq.reshape(-1)
    return det


def exact_prefix_tokens(model: StarFlow, mask: torch.Tensor) -> int | None:
    """How many leading tokens of the deep block's order are known, when the known region is exactly such a
    prefix and the shallow blocks carry it to the deep block on its own (so that sampling the rest given it
    is exact); None otherwise. mask: (1, [T,] C or 1, H, W) True where content is made."""
    c = model.config
    video = mask.dim() == 5
    frames = mask.size(1) if video else 1
    p = c.patch_size
    gh, gw = mask.size(-2) // p, mask.size(-1) // p
    m = mask.bool().any(dim=-3, keepdim=True)                     # any channel masked: the pixel is unknown
    m = m.reshape(*m.shape[:-2], gh, p, gw, p).any(-1).any(-2)
    unknown = m[0].reshape(-1)                                    # (frames * h * w,) tokens, raster order
    known = ~unknown
    if bool(known.all()) or not bool(known.any()):
        return None
    det = _determined_tokens(model, known, frames, gh, gw)
    deep = model.blocks[-1]
    order = deep.permute(torch.arange(len(det))[None, :, None], frames)[0, :, 0]
    det_deep, known_deep = det[order], known[order]
    k = int(known_deep.long().cumprod(0).sum())                   # the known prefix in the deep order
    if k == 0 or bool(known_deep[k:].any()) or not bool(det_deep[:k].all()):
        return None
    return k


def _paste(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.expand_as(x), x, known)


@torch.no_grad()
def inpaint(model: StarFlow, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None = None,
            y_null: torch.Tensor | None = None, options: SamplerOptions | None = None, *, method: str = "auto",
            iterations: int = 8, schedule: tuple[float, float] = (1.0, 0.2),
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill x where `mask` is True (broadcast over batch, channels and frames) with content the model makes
    under y; the rest of x is returned unchanged. method "resample" (iterated), "exact" (a known prefix in
    the deep block's order, through the KV cache) or "auto" (exact where it holds, else resample).
    schedule: the share of fresh noise in the hole at the first and the last round."""
    opt = options or SamplerOptions()
    if method not in INPAINT_METHODS:
        raise ValueError(f"inpainting method must be one of {INPAINT_METHODS}, not {method!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not all(0 <= s <= 1 for s in schedule):
        raise ValueError(f"schedule values must be in [0, 1], got {schedule}")
    model.check_input(x, y)
    mask = _check_mask(mask, x)
    if not bool(mask.any()):
        return x.clone()                                          # nothing to make
    draw = (lambda: torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x))
    if bool(mask.all()):
        return sample(model, draw(), y, y_null, opt)              # nothing known: an ordinary sample
    if method != "resample":
        k = exact_prefix_tokens(model, mask[:1].expand(1, *x.shape[1:]))
        if k is not None and bool((mask == mask[:1]).all()):      # one region for the whole batch
            return _inpaint_exact(model, x, mask, y, y_null, opt, draw, k)
        if method == "exact":
            raise ValueError("method='exact' needs a known region that is a prefix of the deep block's token "
                             "order which the shallow blocks see on their own (e.g. a video's first frames); "
                             "use 'resample'")
    known = x
    first_guess = sample(model, draw(), y, y_null, opt)
    x = _paste(torch.nan_to_num(first_guess, nan=0.0, posinf=0.0, neginf=0.0), known, mask)   # a guess for the hole
    first, last = schedule
    for i in range(iterations):
        share = first if iterations == 1 else first + (last - first) * i / (iterations - 1)
        z = encode(model, x, y, y_null, opt.guidance)
        z = edit_noise(z, math.asin(min(share, 1.0)) * 2 / math.pi, generator, mask)
        new = _paste(sample(model, z, y, y_null, opt), known, mask)
        # an overflowed sample (NonFiniteSampleWarning) keeps the previous round's: the next round's
        # likelihood pass could not take it, and the other items are unaffected
        ok = torch.isfinite(new.flatten(1)).all(1).view(-1, *[1] * (x.dim() - 1))
        x = torch.where(ok, new, x)
    return x


def _inpaint_exact(model: StarFlow, x, mask, y, y_null, opt: SamplerOptions, draw, k: int) -> torch.Tensor:
    """The known region is the first k tokens of the deep block's order and reaches it unchanged: sample the
    rest given it, exactly, through the caches. Videos: the known first frames (image-to-video). Images: a
    model whose blocks before the deep one are all identities (any deep-order prefix)."""
    if x.dim() == 5:
        frames = k // (model.config.grid_size ** 2)
        return sample(model, draw(), y, y_null, opt, prefix=x[:, :frames])
    from .inverse import BlockInverse
    from .jacobi import block_tokens, jacobi_inverse
    from .sequential import sequential_inverse

    z = draw()
    h = model.patchify(z)
    shape = h.shape
    w = opt.guidance if (opt.guidance > 0 and model.config.txt_dim > 0) else 0.0
    view = model.block_views(shape, y, w, y_null=y_null, sampling=True)[-1]
    known = view.block.permute(model.patchify(x).reshape(shape[0], -1, shape[-1]), 1)[:, :k]
    inv = BlockInverse(view, h.reshape(shape[0], -1, shape[-1]), known, prefix_in_block_order=True)
    if opt.method == "sequential":
        out = sequential_inverse(inv, opt.attn_temp, opt.annealed_guidance)
    else:
        out = jacobi_inverse(inv, block_tokens(opt, inv), opt.jacobi_th,
                             opt.jacobi_max_iter, schedule=opt.jacobi_schedule)
    return _paste(model.unpatchify(out.reshape(shape)).to(x.dtype), x, mask)


def _check_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A boolean mask broadcastable to x: (H, W), (1 or B, [T,] 1 or C, H, W), or (T, H, W) for videos."""
    m = torch.as_tensor(mask).to(x.device)
    if m.dtype != torch.bool:
        raise ValueError(f"the mask must be boolean (True where content is made), got {m.dtype}")
    if m.dim() == 2:
        m = m.view(*([1] * (x.dim() - 2)), *m.shape)
    elif m.dim() == 3 and x.dim() == 5:
        m = m[None, :, None]
    if m.dim() != x.dim() or m.shape[-2:] != x.shape[-2:] or any(
            a not in (1, b) for a, b in zip(m.shape[:-2], x.shape[:-2])):
        raise ValueError(f"mask of shape {tuple(torch.as_tensor(mask).shape)} does not fit the input "
                         f"{tuple(x.shape)} (masks are (H, W), or broadcast over batch, frames and channels)")
    return m
