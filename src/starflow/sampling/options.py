"""The sampler settings: one frozen dataclass, carried from the command line and the pipelines' defaults
to the samplers. Every setting is checked here, once; change one with `dataclasses.replace` (or
`SamplerOptions.with_(...)`, which also drops the `None`s of unset command-line flags)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..strict import ConfigError, check_types, from_mapping

__all__ = ["SamplerOptions", "METHODS", "JACOBI_SCHEDULES", "DRAFTS", "DENOISER_PRECISIONS", "DRAFT_TH_FACTOR",
           "WINDOW_ROWS", "WINDOW_WIDTH"]

METHODS = ("jacobi", "sequential")
JACOBI_SCHEDULES = ("official", "sliding")
DRAFTS = ("none", "bf16", "auto")
DENOISER_PRECISIONS = ("model", "bf16", "auto")
# Why a draft stops at 3x the sampler's threshold: the full-precision check after it is one more Jacobi iteration
# of every drafted token, and a token's relative squared change shrinks ~10x per iteration near the fixed point, so
# a draft token that moved by < 3 x th moves by well under th in that check, which accepts it by the sampler's own
# rule. Stopping closer to th (10x had been the rule) leaves tokens at the edge: one that fails the check makes the
# rest of its window run again at full precision, which costs more than the low-precision pass saved. Measured on
# the bench models over 16 video and 14 image inputs, in alternation (benchmarks/RESULTS.md, 17th session): against
# 10x, 5x took 0.965 (video) / 0.939 (image) of the time, 3x the same as 5x on videos (1.007) and 0.919 on images,
# with float32 calls at their floor on most inputs and a lower error (image: max |Jacobi - sequential| 0.067 -> 0.047
# on average).
DRAFT_TH_FACTOR = 3.0
# Why the sliding schedule's window is wider than the official chunk by default (jacobi_window 0): on a CPU a trunk
# call of a small model costs much more than the tokens in it (a fixed cost per operator and per product; small
# products run far under the CPU's rate), and the tokens of a wide window settle together. A call costs about
# layers x (F + c x rows x width^2): the window holds the rows (tokens x sequences in the batch, both guidance
# halves) where the two terms meet, WINDOW_ROWS at WINDOW_WIDTH channels and (WINDOW_WIDTH / width)^2 as many at
# other widths, never fewer tokens than jacobi_block_size (a 3B model's 3072 channels: the block size, as before;
# there each call reads GBs of weights and computes TFLOPs, so wasted evaluations cost, not calls). Bench models
# (256 wide), float32 without a draft, 3 inputs each, 2-core Xeon, against windows of jacobi_block_size (16):
# 512 / 1024 / 2048 rows took images 0.64 / 0.66 / 0.81 of the time (trunk calls 155 -> 27 at 1024, and the error
# vs. the sequential sample 0.12 -> 0.07: each token is evaluated more often before the window leaves it), 8-frame
# videos 0.97 / 0.93 / 0.88, 32-frame ones - / 0.90 / 0.83 (benchmarks/RESULTS.md).
WINDOW_ROWS = 1024
WINDOW_WIDTH = 256


@dataclass(frozen=True)
class SamplerOptions:
    method: str = "jacobi"                # "jacobi" (block-wise fixed point, parallel) or "sequential" (exact)
    guidance: float = 0.0                 # official CFG weight; 0: unguided
    jacobi_block_size: int = 32           # tokens solved together (x4 after a video's first frame)
    jacobi_window: int = 0                # sliding schedule: its window in tokens (x4 after a video's first frame);
                                          # 0: ~WINDOW_ROWS rows at WINDOW_WIDTH (fewer if wider), at least
                                          # jacobi_block_size tokens
    jacobi_th: float = 1e-3               # relative squared change that stops a chunk; 0: never early
    jacobi_max_iter: int = 32
    jacobi_schedule: str = "official"     # "official" chunks, or "sliding" (per-token convergence, faster)
    jacobi_draft: str = "none"            # "bf16" / "auto": solve each block in bfloat16 first (sampling.draft)
    jacobi_draft_block_size: int = 0      # the draft's window (sliding schedule); 0: the whole sequence
    jacobi_draft_th: float | None = None  # the draft's own stopping threshold; None: DRAFT_TH_FACTOR x jacobi_th
    denoiser_precision: str = "model"     # the learnable denoiser after sampling: "model" (the weights' dtype),
                                          # "bf16" (a kept bf16 copy predicts, the update stays in x's dtype), "auto"
                                          # (bf16 where bf16 matmuls are native); sampling.denoise
    attn_window: int | None = None        # videos: latent frames the deep block attends to (a sliding window
                                          # past them); None: the model's own local_attn_window
    context_length: int | None = None     # long videos: latent frames of re-encoded context (None: window - 1)
    attn_temp: float = 1.0                # sequential only: attention temperature
    annealed_guidance: bool = False       # sequential only: guidance grows linearly over the tokens
    compile: bool = False                 # sequential only: each token step as one torch.compile'd graph
                                          # (nn.decode; compiles on first use, seconds per block)
    progress: bool = False

    def __post_init__(self):
        check_types(self)

        def bad(msg: str):
            raise ConfigError(msg)

        if self.method not in METHODS:
            bad(f"sampler must be 'jacobi' or 'sequential', not {self.method!r}")
        if self.jacobi_schedule not in JACOBI_SCHEDULES:
            bad(f"jacobi_schedule must be one of {JACOBI_SCHEDULES}, not {self.jacobi_schedule!r}")
        if self.jacobi_draft not in DRAFTS:
            bad(f"jacobi_draft must be one of {DRAFTS}, not {self.jacobi_draft!r}")
        if self.denoiser_precision not in DENOISER_PRECISIONS:
            bad(f"denoiser_precision must be one of {DENOISER_PRECISIONS}, not {self.denoiser_precision!r}")
        if not (math.isfinite(self.guidance) and 0 <= self.guidance <= 100):
            bad(f"guidance must be a number in [0, 100] (0: unguided), got {self.guidance}")
        for name in ("jacobi_block_size", "jacobi_max_iter"):
            if getattr(self, name) < 1:
                bad(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.jacobi_th) and self.jacobi_th >= 0):
            bad(f"jacobi_th must be a finite number >= 0 (0: never stop early), got {self.jacobi_th}")
        if self.jacobi_draft_th is not None and not (math.isfinite(self.jacobi_draft_th) and self.jacobi_draft_th >= 0):
            bad(f"jacobi_draft_th must be a finite number >= 0 (or unset: {DRAFT_TH_FACTOR:g} x jacobi_th), "
                f"got {self.jacobi_draft_th}")
        if self.jacobi_draft_block_size < 0:
            bad("jacobi_draft_block_size must be >= 0 (0: the whole sequence)")
        if self.jacobi_window < 0:
            bad(f"jacobi_window must be >= 0 (0: chosen per block), got {self.jacobi_window}")
        for name in ("attn_window", "context_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"{name} must be >= 1 latent frames (or unset), got {v}")
        if not (math.isfinite(self.attn_temp) and self.attn_temp > 0):
            bad(f"attn_temp must be a finite number > 0, got {self.attn_temp}")

    @property
    def draft_th(self) -> float:
        """The threshold that stops a draft's Jacobi solve (sampling.draft)."""
        return DRAFT_TH_FACTOR * self.jacobi_th if self.jacobi_draft_th is None else self.jacobi_draft_th

    def jacobi_tokens(self, tokens: int, rows: int, width: int) -> int:
        """Tokens a Jacobi solve of a block works on at once: the official schedule's chunk (jacobi_block_size), or
        the sliding schedule's window (jacobi_window; 0: WINDOW_ROWS x (WINDOW_WIDTH / width)^2 rows, between
        jacobi_block_size and all `tokens` of the block's sequence). rows: the sequences the block runs at once
        (guided: both halves); width: its channels."""
        if self.jacobi_schedule == "official":
            return self.jacobi_block_size
        if self.jacobi_window:
            return self.jacobi_window
        budget = WINDOW_ROWS * WINDOW_WIDTH ** 2 // (max(rows, 1) * max(width, 1) ** 2)
        return max(self.jacobi_block_size, min(tokens, budget))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "sampler options") -> "SamplerOptions":
        return from_mapping(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_(self, **changes: Any) -> "SamplerOptions":
        """A copy with `changes` applied, where a None (a flag the user did not give) keeps the current value;
        `dataclasses.replace` sets a value to None."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown sampler option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
