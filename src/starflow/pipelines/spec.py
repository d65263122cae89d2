"""What a pipeline is made of, as data: the flow's config, the text encoder and autoencoder specs, defaults.

One structure serves three files:
- `pipeline.json` in a pipeline directory (written by `save_pretrained`),
- our YAML files in `configs/` (`kind`, `model`, `text_encoder`, `autoencoder`, `defaults`),
- the official YAML files (`arguments:` list), read through `spec_from_official`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping


from ..config import ConfigError, ModelConfig, load_official_yaml, load_yaml
from ..flow.io import atomic_write_text
from ..sampling.options import SamplerOptions
from ..strict import check_types, from_mapping

__all__ = ["ASPECT_RATIOS", "aspect_ratio_to_size", "PipelineDefaults", "PipelineSpec", "read_spec",
           "spec_from_official", "spec_from_training", "official_text_spec", "official_autoencoder_spec", "SPEC_FORMAT"]

SPEC_FORMAT = "starflow-pipeline"
SPEC_VERSION = 2

# The official sampler's choices, in its order.
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "16:9", "9:16", "4:5", "5:4", "21:9", "9:21")


def aspect_ratio_to_size(target: int, ratio: str | None, multiple: int) -> tuple[int, int]:
    """(height, width) with the area of a target x target square, each side a multiple of `multiple`."""
    if ratio is None:
        return target, target
    if ratio not in ASPECT_RATIOS:
        raise ValueError(f"unknown aspect ratio {ratio!r}; choose one of {', '.join(ASPECT_RATIOS)}")
    rw, rh = (int(v) for v in ratio.split(":"))
    r = rw / rh
    area = target * target
    h = int(round(math.sqrt(area / r) / multiple)) * multiple
    w = int(round(math.sqrt(area * r) / multiple)) * multiple
    return h, w


@dataclass
class PipelineDefaults:
    """Generation defaults stored with a pipeline; every one can be overridden per call."""

    sampling: SamplerOptions = field(default_factory=SamplerOptions)   # sampler, guidance, Jacobi settings...
    noise_std: float = 0.0            # training noise level: denoising step, image-to-video prefix noise
    denoise: str = "none"             # "score", "learned" or "none"
    fps_cond: bool = False            # official flags: what the prompt template carries
    cond_noise_level: bool = False
    mix_aspect: bool = False
    aspect_ratio: str | None = None   # default aspect ratio (None: square)
    num_frames: int | None = None     # videos: the trained length in pixel frames
    fps: int | None = None            # videos: frames per second written (and conditioned on with fps_cond)

    def __post_init__(self):
        check_types(self)
        if self.denoise not in ("score", "learned", "none"):
            raise ConfigError(f"defaults.denoise must be 'score', 'learned' or 'none', not {self.denoise!r}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ConfigError(f"defaults.noise_std must be a finite number >= 0, got {self.noise_std}")
        if self.aspect_ratio is not None and self.aspect_ratio not in ASPECT_RATIOS:
            raise ConfigError(f"defaults.aspect_ratio {self.aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
        for name in ("num_frames", "fps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"defaults.{name} must be >= 1 (or unset), got {v}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "pipeline defaults") -> "PipelineDefaults":
        return from_mapping(cls, d, where)


# pipeline.json version 1 kept the sampler settings among the defaults, under other names
_V1_SAMPLING = {"guidance": "guidance", "sampler": "method", "jacobi_block_size": "jacobi_block_size",
                "jacobi_threshold": "jacobi_th", "jacobi_max_iter": "jacobi_max_iter", "jacobi_draft": "jacobi_draft",
                "context_length": "context_length"}


def _defaults_from_v1(d: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(d or {})
    sampling = {new: d.pop(old) for old, new in _V1_SAMPLING.items() if old in d}
    return {**d, "sampling": sampling}


@dataclass
class PipelineSpec:
    kind: str                                  # "image" or "video"
    model: dict[str, Any] | None = None        # ModelConfig keys (img_size in latent units): our YAML configs;
                                               # a pipeline folder keeps its flow in flow/ instead
    text_encoder: str | None = None            # spec for starflow.conditioning.load_text_encoder
    autoencoder: str | None = None             # spec for starflow.autoencoders.load_autoencoder
    defaults: PipelineDefaults = field(default_factory=PipelineDefaults)

    def __post_init__(self):
        check_types(self)
        if self.kind not in ("image", "video"):
            raise ConfigError(f"pipeline kind must be 'image' or 'video', not {self.kind!r}")

    def model_config(self) -> ModelConfig:
        if self.model is None:
            raise ConfigError("this pipeline spec has no model section")
        return ModelConfig.from_dict(self.model)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "pipeline spec") -> "PipelineSpec":
        d = dict(d)
        fmt, version = d.pop("format", SPEC_FORMAT), d.pop("version", SPEC_VERSION)
        if fmt != SPEC_FORMAT:
            raise ConfigError(f"{where}: format {fmt!r} is not {SPEC_FORMAT!r}")
        if version not in (1, SPEC_VERSION):
            raise ConfigError(f"{where}: version {version} is not supported (this starflow reads 1 and {SPEC_VERSION})")
        if "kind" not in d:
            raise ConfigError(f"{where}: missing key 'kind'")
        model = d.get("model")
        if version == 1:   # starflow 0.1: flat sampler defaults, 0/1 booleans in the model
            d["defaults"] = _defaults_from_v1(d.get("defaults") or {})
            if isinstance(model, Mapping):
                d["model"] = ModelConfig.from_dict(model, official=True, where=f"{where} model").to_dict()
        spec = from_mapping(cls, d, where)
        if spec.model is not None:
            ModelConfig.from_dict(spec.model, where=f"{where} model")   # validate now, naming the file
        return spec

    def to_dict(self) -> dict[str, Any]:
        d = {"format": SPEC_FORMAT, "version": SPEC_VERSION, "kind": self.kind, "text_encoder": self.text_encoder,
             "autoencoder": self.autoencoder, "defaults": asdict(self.defaults)}
        if self.model is not None:
            d["model"] = dict(self.model)
        return d

    def write_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _is_official(d: Mapping[str, Any]) -> bool:
    return "model" not in d and "kind" not in d


def read_spec(path: str | Path) -> PipelineSpec:
    """Read our YAML/JSON pipeline config. Official YAML files are rejected here: use `spec_from_official`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pipeline config not found: {path}")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping")
    if "arguments" in data or _is_official(data):
        raise ConfigError(f"{path} is an official config: load it with from_official(config, checkpoint)")
    return PipelineSpec.from_dict(data, where=str(path))


def official_text_spec(name: str | None) -> str | None:
    """Official `text:` value -> our text encoder spec ('google/flan-t5-xl' -> 't5:google/flan-t5-xl')."""
    if not name:
        return None
    from ..conditioning import text_spec_from_official
    return text_spec_from_official(str(name))


def official_autoencoder_spec(name: str | None) -> str:
    """Official `vae:` value -> our autoencoder spec (the Wan2.2 ':0.6' temporal latent scale is kept)."""
    from ..autoencoders import autoencoder_spec_from_official
    return autoencoder_spec_from_official(None if name is None else str(name))


def spec_from_official(args: Mapping[str, Any] | str | Path, *, spatial_factor: int, txt_dim: int,
                       text_encoder: str | None = None, autoencoder: str | None = None) -> PipelineSpec:
    """Official argument set (or YAML path) -> PipelineSpec.

    The official YAML gives `img_size` in pixels and no `txt_dim` (both come from the loaded
    autoencoder and text encoder at run time), hence the two keyword arguments.
    """
    if isinstance(args, (str, Path)):
        args = load_official_yaml(args)
    args = dict(args)
    if "img_size" not in args:
        raise ConfigError("official config has no img_size")
    px = int(args["img_size"])
    if px % spatial_factor:
        raise ConfigError(f"official img_size {px} is not a multiple of the autoencoder factor {spatial_factor}")
    model = dict(args)
    model["img_size"] = px // spatial_factor
    model["txt_dim"] = txt_dim
    # rejects keys that are neither architecture nor official extras
    cfg = ModelConfig.from_dict(model, official=True, where="official config")
    extra = cfg.extra
    video = extra.get("vid_size") is not None
    num_frames = fps = None
    if video:
        try:
            num_frames, fps = (int(v) for v in str(extra["vid_size"]).split(":"))
        except ValueError as e:
            raise ConfigError(f"official vid_size {extra['vid_size']!r} is not 'frames:fps'") from e
    noise_std = float(extra.get("target_noise_std") or extra.get("noise_std") or 0.0)
    finetuned = str(extra.get("finetuned_vae", "none")).lower()
    if cfg.learnable_self_denoiser:
        denoise = "learned"
    elif noise_std > 0 and finetuned in ("none", "null"):
        denoise = "score"
    else:  # a decoder fine-tuned on noisy latents removes the noise itself
        denoise = "none"
    sampling = SamplerOptions(method="jacobi", guidance=float(extra.get("cfg", 0.0) or 0.0),
                              jacobi_block_size=32 if video else 16, jacobi_th=1e-3, jacobi_max_iter=32)
    defaults = PipelineDefaults(
        sampling=sampling, noise_std=noise_std, denoise=denoise,
        fps_cond=bool(extra.get("fps_cond", 0)), cond_noise_level=bool(extra.get("cond_noise_level", 0)),
        mix_aspect=bool(extra.get("mix_aspect", 0)), num_frames=num_frames, fps=fps)
    return PipelineSpec(kind="video" if video else "image", model=cfg.to_dict(),
                        text_encoder=text_encoder if text_encoder is not None else official_text_spec(extra.get("text")),
                        autoencoder=autoencoder if autoencoder is not None else official_autoencoder_spec(extra.get("vae")),
                        defaults=defaults)


def spec_from_training(train: Mapping[str, Any], config: ModelConfig) -> PipelineSpec:
    """A training run's config (TrainConfig.to_dict(): `starflow train` writes it as training.json) + the
    trained flow's config -> PipelineSpec: the text encoder, autoencoder and noise level it was trained with.
    Reads the plain mapping, so that pipelines need nothing from the training package."""
    data, log = train.get("data", {}), train.get("log", {})
    video = data.get("dataset") in ("moving_digits", "video_folder")
    if data.get("condition") == "text":
        text = data.get("text_encoder", "minilm")
    elif data.get("condition") == "labels":
        text = f"labels:{config.txt_dim - 1}"      # one-hot rows with a null class
    else:
        text = None
    noise = float(data.get("noise_std") or max(data.get("noise_levels") or [0.0]))
    denoise = "learned" if config.learnable_self_denoiser else ("score" if noise > 0 else "none")
    guidance = float(log.get("sample_guidance", 0.0)) if text else 0.0
    defaults = PipelineDefaults(sampling=SamplerOptions(guidance=guidance), noise_std=noise, denoise=denoise,
                                num_frames=int(data.get("num_frames", 8)) if video else None)
    return PipelineSpec(kind="video" if video else "image", text_encoder=text,
                        autoencoder=data.get("autoencoder") or "identity", defaults=defaults)
