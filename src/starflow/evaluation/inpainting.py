"""Inpainting and editing measured on the held-out digits, read by the digits classifier.

For each held-out test digit (the digits protocol split, never seen in training):
- **lower half, right prompt**: rows 4..7 are made under the digit's own prompt; the classifier reads the
  completion. The upper half must come back unchanged (exactly, in the model's pixel space).
- **random 4x4 box, right prompt**: a box at a random place (seeded per item).
- **lower half, another digit's prompt**: the target is a digit the upper half allows. "Allows" is
  measured on the training split: the 20 training digits whose upper halves are nearest (L2) to this one
  include at least 2 of the target digit; the target is the most frequent such digit other than the
  source. Items whose upper half allows no other digit are left out (their count is reported).
- **editing to another digit's prompt**: the whole digit is inverted under its own prompt and sampled
  under the target's (the same targets), at `edit_strength`; and strength 0 with the unchanged prompt must
  give the input back (the largest difference is reported).
Pictures are written as rows: masked input | completion (inpaint), input | edited (edit).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.digits import digits_split, load_digits_arrays
from .classifier import DigitsClassifier

__all__ = ["InpaintingFigures", "evaluate_inpainting", "allowed_targets"]

_NEIGHBOURS, _MIN_VOTES = 20, 2


@dataclass
class InpaintingFigures:
    lower_right: float                     # classifier reads the prompted digit, lower half made
    box_right: float                       # ... a random 4x4 box made
    lower_other: float                     # ... the lower half made under another (allowed) digit's prompt
    lower_other_items: int                 # items with an allowed other digit
    edit_target: float                     # edits read as the target digit
    edit_strength: float
    known_max_change: float                # largest change of a known pixel over every inpainting (0: exact)
    edit_identity_max_err: float           # strength 0, same prompt: largest difference to the input
    items: int
    pictures: dict = field(default_factory=dict, repr=False)   # name -> (N, C, H, W) rows for the demo


def _digit_prompts(pipe) -> list[str]:
    from .classifier import DIGIT_PROMPTS
    return [str(d) for d in range(10)] if str(pipe.text_encoder_spec or "").startswith("labels:") else DIGIT_PROMPTS


def allowed_targets(upper: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """For upper halves (N, 32) on the 0..16 scale: the most frequent digit other than the source among the 20
    training digits with the nearest upper halves, when it has at least 2 of them; -1 otherwise."""
    values, labels = load_digits_arrays()
    train, _ = digits_split()
    ref = values[train].reshape(len(train), 64)[:, :32].float().numpy()
    lab = labels[train].numpy()
    d = ((upper[:, None, :] - ref[None]) ** 2).sum(-1)                       # (N, train)
    near = lab[np.argsort(d, axis=1)[:, :_NEIGHBOURS]]                       # (N, 20)
    out = np.full(len(upper), -1)
    for i, (row, src) in enumerate(zip(near, sources)):
        counts = np.bincount(row, minlength=10)
        counts[src] = 0
        if counts.max() >= _MIN_VOTES:
            out[i] = int(counts.argmax())
    return out


def _batched(fn, n: int, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(slice(s, s + batch_size)) for s in range(0, n, batch_size)])


def _rows(inputs: torch.Tensor, outputs: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Pairs for a picture: the input (its masked part shown grey) beside the output, (2N, C, H, W)."""
    shown = inputs.clone()
    if masks is not None:
        m = masks if masks.dim() == 4 else masks.reshape(-1, 1, *masks.shape[-2:])
        shown = torch.where(m.expand_as(shown), torch.zeros_like(shown), shown)
    return torch.stack([shown, outputs], 1).flatten(0, 1)


@torch.no_grad()
def evaluate_inpainting(pipe, classifier: DigitsClassifier | None = None, *, items: int = 0, seed: int = 0,
                        iterations: int = 8, edit_strength: float = 0.8, dequantized: bool = False,
                        batch_size: int = 100, **sampling) -> InpaintingFigures:
    """The figures above for a digits text-to-image pipeline (pixel space, 8x8). items: how many held-out
    digits (0: all 297), the same ones for every figure. Sampler settings as the pipeline's calls take them."""
    clf = classifier or DigitsClassifier.fit()
    values, labels = load_digits_arrays()
    _, test = digits_split()
    if items:
        test = test[:items]
    v, src = values[test].float(), labels[test].numpy()                       # (N, 1, 8, 8) 0..16
    x = (v + 0.5) * (2 / 17) - 1 if dequantized else v * (2 / 16) - 1          # the model's pixel space
    n = len(x)
    prompts = _digit_prompts(pipe)
    g = torch.Generator().manual_seed(seed)
    lower = torch.zeros(n, 8, 8, dtype=torch.bool)
    lower[:, 4:] = True
    boxes = torch.zeros(n, 8, 8, dtype=torch.bool)
    for i, (r, c) in enumerate(torch.randint(0, 5, (n, 2), generator=g).tolist()):
        boxes[i, r:r + 4, c:c + 4] = True
    targets = allowed_targets(v.reshape(n, 64)[:, :32].numpy(), src)
    keep = np.flatnonzero(targets >= 0)
    kw = dict(seed=seed, output_type="pt", **sampling)

    def fill(xs, masks, digits):
        return _batched(lambda sl: pipe.inpaint([prompts[d] for d in digits[sl]], xs[sl], masks[sl],
                                                iterations=iterations, **kw).images * 2 - 1, len(xs), batch_size)

    def edit(xs, sources, digits, strength, **extra):
        return _batched(lambda sl: pipe.edit([prompts[d] for d in digits[sl]], xs[sl],
                                             source_prompt=[prompts[d] for d in sources[sl]], strength=strength,
                                             **{**kw, **extra}).images * 2 - 1, len(xs), batch_size)

    lower_out, box_out = fill(x, lower, src), fill(x, boxes, src)
    other_out = fill(x[keep], lower[keep], targets[keep])
    edit_out = edit(x[keep], src[keep], targets[keep], edit_strength)
    # strength 0, the unchanged prompt, the exact sampler, no denoising: what went in comes out
    m = min(n, batch_size)
    same = edit(x[:m], src[:m], src[:m], 0.0, method="sequential", denoise="none")
    ident = float((same - x[:m]).abs().max())
    known_change = max(float(((lower_out - x).abs() * ~lower[:, None]).max()),
                       float(((box_out - x).abs() * ~boxes[:, None]).max()))

    def hits(imgs, want):
        return float((clf.predict(imgs, dequantized) == want).mean()) if len(want) else float("nan")

    return InpaintingFigures(
        lower_right=hits(lower_out, src), box_right=hits(box_out, src), lower_other=hits(other_out, targets[keep]),
        lower_other_items=len(keep), edit_target=hits(edit_out, targets[keep]), edit_strength=edit_strength,
        known_max_change=known_change, edit_identity_max_err=ident, items=n,
        pictures={"lower": _rows(x, lower_out, lower), "box": _rows(x, box_out, boxes),
                  "other": _rows(x[keep], other_out, lower[keep]), "edit": _rows(x[keep], edit_out)})
