"""Typed training configuration: `model:`, `data:`, `optim:`, `log:`, `dist:` sections of one YAML file.

Unknown keys are errors (a typo must not silently fall back to a default), values must have their
field's type (starflow.strict), and each section checks its ranges when it is built. Command-line
overrides use dotted paths, values read as YAML: `optim.lr=1e-3 model.channels=64 data.caption_dropout=0.2`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, ModelConfig, load_yaml, load_yaml_file, yaml_problem
from ..strict import check_types, from_mapping, unknown_keys

__all__ = ["DataConfig", "OptimConfig", "LogConfig", "DistConfig", "TrainConfig", "load_train_config",
           "apply_overrides", "ConfigError", "check_model_section"]

DATASETS = ("digits", "moving_digits", "image_folder", "video_folder")
PRECISIONS = ("auto", "fp32", "bf16")
CONDITIONS = ("none", "labels", "text")


@dataclass
class DataConfig:
    dataset: str = "digits"              # digits | moving_digits | image_folder | video_folder
    path: str | None = None              # folder datasets: the root folder
    image_size: int = 8                  # pixel side (buckets: the side of a square of the same area)
    channels: int = 3                    # folders: 1 (grey) or 3 (RGB); digits are always 1
    num_frames: int = 8                  # videos (moving digits, video folders)
    frame_stride: int = 1                # video folders: keep every n-th frame
    canvas: int = 16                     # moving digits: frame side
    speed: int = 4                       # moving digits: pixels per frame (bouncing off the canvas edges)
    start: str = "any"                   # moving digits: "any" start whose first step goes the captioned way,
                                         # or "wall": at the wall it moves away from
    align: bool = False                  # moving digits: the fixed coordinate on multiples of speed as well
    motion: str = "bounce"               # moving digits: "bounce" off the edges, or "wrap" round (a torus)
    first_frames: float = 0.0            # videos: share of steps that train on the first frames alone (images)
    first_frames_batch: int = 0          # items in such a step (0: batch_size x num_frames, the same tokens)
    num_videos: int = 2000               # moving digits: videos generated per split
    aspect_ratios: list[str] | None = None   # e.g. ["1:1", "16:9", "9:16"]: one bucket each
    condition: str = "none"              # none | labels | text
    text_encoder: str = "minilm"         # starflow.conditioning spec for condition=text
    txt_size: int = 8                    # text tokens (labels always use 1)
    caption_dropout: float = 0.1         # probability of the null condition (classifier-free guidance)
    noise_std: float = 0.0               # Gaussian noise augmentation sigma (official recipe: 0.3)
    noise_levels: list[float] | None = None  # per-sample sigma drawn from this list instead of noise_std
    noise_weighting: bool = False        # weight each sample's loss by sigma / noise_ref (official: /0.3)
    noise_ref: float = 0.3
    dequantize: bool = False             # uniform dequantisation x = (v + u) 2/L - 1: likelihood runs
    logit_alpha: float = 0.0             # > 0: the flow models logit(a + (1-2a)(x+1)/2) (RealNVP), its Jacobian
                                         # counted in every likelihood; needs dequantize (x in [-1, 1))
    gaussianize: bool = False            # the flow models Phi^-1(per-pixel training CDF of x) (see transforms.py)
    gaussianize_pseudo_count: float = 1.0
    autoencoder: str | None = None       # None/"identity" (pixels), "kl:<dir>", "sd-vae:<dir>", "wan:<dir>"
    cache_latents: bool = True           # encode each item once (small datasets; noise is added after)
    cache: bool | None = None            # folders: keep decoded items in memory (None: when <= 4096 items)
    skip_unreadable: bool = False        # folders: decode every file once at the start and leave out (with a
                                         # warning counting them) those that fail; false: such a file is an error
    eval_split: bool = True              # digits / moving digits: evaluate on the held-out split
    val_items: int = 0                   # items of the training data held out for validation (model selection)

    def __post_init__(self):
        check_types(self)
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {DATASETS}, not {self.dataset!r}")
        if self.condition not in CONDITIONS:
            raise ConfigError(f"data.condition must be one of {CONDITIONS}, not {self.condition!r}")
        if self.dataset in ("image_folder", "video_folder") and not self.path:
            raise ConfigError(f"data.path is required for dataset {self.dataset}")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError("data.caption_dropout must be in [0, 1)")
        if self.dequantize and (self.noise_std > 0 or self.noise_levels):
            raise ConfigError("choose one of data.dequantize and Gaussian noise (noise_std / noise_levels)")
        if self.dequantize and self.autoencoder not in (None, "identity"):
            raise ConfigError("data.dequantize applies to pixels; with an autoencoder use noise_std")
        if self.noise_std < 0 or any(s <= 0 for s in (self.noise_levels or [])):
            raise ConfigError("noise levels must be positive")
        if self.logit_alpha and not (self.dequantize and 0 < self.logit_alpha < 0.5):
            raise ConfigError("data.logit_alpha needs data.dequantize and a value in (0, 0.5)")
        if self.gaussianize and (not self.dequantize or self.logit_alpha):
            raise ConfigError("data.gaussianize needs data.dequantize, and excludes data.logit_alpha")
        if self.val_items < 0:
            raise ConfigError("data.val_items must be >= 0")
        if self.noise_weighting and not (self.noise_levels or self.noise_std > 0):
            raise ConfigError("data.noise_weighting needs noise_std or noise_levels")
        if not 0 <= self.first_frames < 1 or self.first_frames_batch < 0:
            raise ConfigError("data.first_frames must be in [0, 1) and data.first_frames_batch >= 0")
        if self.motion not in ("bounce", "wrap"):
            raise ConfigError(f"data.motion must be 'bounce' or 'wrap', not {self.motion!r}")
        if self.start not in ("any", "wall"):
            raise ConfigError(f"data.start must be 'any' or 'wall', not {self.start!r}")
        for name in ("image_size", "num_frames", "frame_stride", "canvas", "speed", "num_videos", "txt_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if not math.isfinite(self.noise_std):
            raise ConfigError(f"data.noise_std must be finite, got {self.noise_std}")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    max_steps: int | None = 1000         # at least one of max_steps / max_seconds
    max_seconds: float | None = None     # wall-clock budget of the training loop (evaluation excluded)
    batch_size: int = 64                 # global batch per optimiser step (all processes, all micro-batches)
    grad_accum: int = 1
    grad_clip: float = 1.0               # 0: no clipping
    grad_skip_threshold: float = 0.0     # skip steps whose gradient norm exceeds this (0: never)
    grad_skip_after: int = 100           # ... but only after this many steps (early norms are large)
    ema: float = 0.0                     # EMA decay of the weights (0: no EMA)
    precision: str = "auto"              # fp32 | bf16 (autocast, float32 weights) | auto: bf16 on GPU; on a CPU
                                         # bf16 where a timed probe of a few steps finds it faster (logged)
    grad_checkpoint: bool = False
    dropout: float = 0.0                 # residual dropout on attention and MLP outputs (training only)
    latent_norm_reg: float = 0.0         # official latent_norm_regularization (1e-4 is their value)
    denoiser_lr: float = 1e-4            # the learnable denoiser's own AdamW (official values)
    denoiser_min_lr: float = 1e-6
    num_threads: int | None = None       # torch CPU threads (None: leave torch's default)
    nonfinite_patience: int = 50         # stop when this many steps in a row had a non-finite loss or gradient
                                         # (each one skipped): the model has diverged (0: never stop)

    def __post_init__(self):
        check_types(self)
        if self.max_steps is None and self.max_seconds is None:
            raise ConfigError("set optim.max_steps or optim.max_seconds")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"optim.batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")
        if len(self.betas) != 2:
            raise ConfigError("optim.betas needs two values")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"optim.precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not 0 <= self.ema < 1:
            raise ConfigError("optim.ema must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ConfigError("optim.dropout must be in [0, 1)")
        if not (math.isfinite(self.lr) and self.lr > 0) or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need a finite optim.lr > 0 and 0 <= optim.min_lr <= lr (lr={self.lr}, "
                              f"min_lr={self.min_lr})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"optim.max_steps must be >= 1 (or null), got {self.max_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"optim.max_seconds must be > 0 (or null), got {self.max_seconds}")
        for name in ("warmup_steps", "grad_clip", "grad_skip_threshold", "grad_skip_after", "weight_decay",
                     "latent_norm_reg"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"optim.{name} must be a finite number >= 0, got {v}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"optim.num_threads must be >= 1 (or null: torch's default), got {self.num_threads}")
        if self.nonfinite_patience < 0:
            raise ConfigError(f"optim.nonfinite_patience must be >= 0 (0: never stop), got {self.nonfinite_patience}")


@dataclass
class LogConfig:
    out_dir: str = "runs/train"
    log_every: int = 10                  # metrics.jsonl rows (steps)
    eval_every: int = 0                  # held-out bits/dim (steps; 0: at the end only)
    sample_every: int = 0                # sample grid PNG (steps; 0: at the end only; -1: never)
    ckpt_every: int = 0                  # checkpoints (steps; 0: at the end only)
    ckpt_every_seconds: float = 0.0      # also checkpoint after this much wall time (0: off)
    keep_last: int = 3
    progress: bool = True
    eval_draws: int = 4                  # dequantisation / noise draws per held-out item
    eval_max_items: int = 0              # cap on held-out items (0: all)
    sample_count: int = 16
    sample_guidance: float = 2.0
    plot: bool = True
    keep_best: bool = False              # end with the weights of the best validation bits/dim (needs val_items)

    def __post_init__(self):
        check_types(self)
        for name in ("log_every", "keep_last", "eval_draws", "sample_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"log.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "ckpt_every_seconds", "eval_max_items"):
            if getattr(self, name) < 0:
                raise ConfigError(f"log.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.sample_every < -1:
            raise ConfigError(f"log.sample_every must be >= -1 (-1: never, 0: at the end), got {self.sample_every}")


@dataclass
class DistConfig:
    strategy: str = "auto"               # auto (ddp when launched by torchrun) | none | ddp | fsdp
    backend: str = "auto"                # auto: nccl on GPU, gloo on CPU
    timeout_s: float = 600.0             # how long a process waits for the others in a collective before the run
                                         # stops with an error (a frozen or dead process); raise it when one process
                                         # works alone for long, e.g. saving a very large checkpoint to slow storage

    def __post_init__(self):
        check_types(self)
        if self.strategy not in ("auto", "none", "ddp", "fsdp"):
            raise ConfigError(f"dist.strategy must be auto, none, ddp or fsdp, not {self.strategy!r}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ConfigError(f"dist.backend must be auto, gloo or nccl, not {self.backend!r}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"dist.timeout_s must be a finite number of seconds > 0, got {self.timeout_s}")


# keys of the `model:` section that are not ModelConfig fields: where the model part comes from
MODEL_SECTION_SOURCES = ("official_yaml", "size")


def check_model_section(model: Any) -> None:
    """The training config's own `model:` keys must be model keys (or official_yaml / size). Official
    non-model keys (lr, noise_std, vae...) are accepted only from the file named by `official_yaml`, so that
    a typo (`model.chanels`) or a stray training key (`model.lr`) is an error instead of being ignored.
    `extra` (an explicit mapping of official extras, as `ModelConfig.to_dict` writes it) is allowed."""
    if not isinstance(model, dict):
        raise ConfigError("model: expected a mapping of model keys")
    unknown, known = unknown_keys(ModelConfig, {k: v for k, v in model.items() if k not in MODEL_SECTION_SOURCES})
    if unknown:
        names = sorted((set(known) | set(MODEL_SECTION_SOURCES)) - {"extra"})
        raise ConfigError(f"unknown key(s) {', '.join('model.' + str(k) for k in unknown)}; known in model: "
                          f"{', '.join(names)} (training keys belong in optim / data / log)")


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=dict)   # ModelConfig keys, or official_yaml / size + overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    seed: int = 0
    resume: bool = False                 # continue from the latest checkpoint in log.out_dir
    overwrite: bool = False              # start again in a log.out_dir that holds an earlier run (its checkpoints,
                                         # metrics, samples and final/ are removed); without it that is an error

    def __post_init__(self):
        check_types(self)
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: resume continues the run in log.out_dir, "
                              "overwrite starts it again")
        if self.log.keep_best and not (self.data.val_items > 0 and self.log.eval_every > 0):
            raise ConfigError("log.keep_best needs data.val_items > 0 and log.eval_every > 0")
        check_model_section(self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping with model/data/optim/log/dist sections")
        optim = d.get("optim")
        if isinstance(optim, dict) and "bf16" in optim:
            raise ConfigError(f"{where + ': ' if where else ''}optim.bf16 is now optim.precision "
                              f"(fp32 | bf16 | auto)")
        from .official import apply_official_settings   # an official YAML's train.py settings, where unset
        return from_mapping(cls, apply_official_settings(copy.deepcopy(d), where), where)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "TrainConfig":
        """A run's config as starflow wrote it (training.json; starflow 0.1's config.json "train" entry, whose
        optim.bf16 'auto' / 'true' / 'false' is read as the precision)."""
        d = {**d, "optim": dict(d.get("optim") or {})}
        if "bf16" in d["optim"]:
            d["optim"]["precision"] = {"true": "bf16", "false": "fp32"}.get(str(d["optim"].pop("bf16")).lower(), "auto")
        return cls.from_dict(d)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        return path, load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({yaml_problem(e)})") from None


def apply_overrides(d: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Set dotted keys in a raw config mapping (values parsed as YAML scalars / lists)."""
    for item in overrides or []:
        path, value = _parse_override(item)
        node = d
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[path[-1]] = value
    return d


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML (or start from defaults when path is None) and apply `overrides`."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = load_yaml_file(path, "training config") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with model/data/optim/log/dist sections")
        model = raw.get("model") or {}
        if isinstance(model, dict) and "official_yaml" in model:
            ref = Path(str(model["official_yaml"]))
            if not ref.is_absolute() and not ref.exists():  # relative to the config file
                model["official_yaml"] = str(path.parent / ref)
    return TrainConfig.from_dict(apply_overrides(raw, overrides))
