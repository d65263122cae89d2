"""Model configuration under the official argument names.

The official code passes an argparse namespace around; we keep the same key names (so official
YAML files and checkpoints map one to one) in a typed dataclass that rejects unknown keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["ModelConfig", "ConfigError", "load_official_yaml", "MODEL_SIZES"]


class ConfigError(ValueError):
    """A configuration key or value the model cannot honour."""


# Keys of the official `arguments:` YAML / CLI that concern training, data or sampling rather than
# the flow's architecture. They are accepted (and kept in `ModelConfig.extra`) when reading an
# official file, so that the official configs load; any other unknown key is an error.
OFFICIAL_NON_MODEL_KEYS = frozenset({
    "no_flip", "fsdp", "fsdp_text_encoder", "noise_std", "batch_size", "lr", "min_lr", "nvp", "adaln",
    "wds", "gradient_checkpoint", "gradient_checkpoint_mlp", "vae", "text", "cfg", "drop_label",
    "sample_freq", "latent_norm_regularization", "secondary_img_size", "vid_size", "fps_cond",
    "secondary_batch_size", "secondary_ratio", "mix_aspect", "cond_noise_level", "finetuned_vae",
    "drop_image", "loss_scaling", "grad_clip", "grad_skip", "epochs", "seed", "logdir", "dataset",
    "data", "num_workers", "use_pretrained_lm", "use_mm_attn", "use_checkpoint",
    "use_checkpoint_mlp", "weight_decay", "warmup", "aspect_ratio", "jacobi", "jacobi_th",
    "jacobi_block_size", "jacobi_max_iter", "target_noise_std", "out_fps", "sample_batch_size",
    "ema", "resume", "compile",
})


@dataclass
class ModelConfig:
    """Architecture of a STARFlow / STARFlow-V flow, official names and defaults.

    `img_size` is the side length of the model's input (latent or pixel grid), before patchify.
    """

    channel_size: int = 4            # input channels (latent channels, or 3 for pixels)
    img_size: int = 32               # input side length
    patch_size: int = 1
    channels: int = 256              # transformer width
    blocks: int = 2                  # number of flow blocks; the last one is the deep block
    layers_per_block: list[int] = field(default_factory=lambda: [2])
    head_dim: int = 64
    num_heads: int | None = None
    num_kv_heads: int | None = None
    rope: int = 1
    pt_seq_len: int | None = None
    sos: int = 0
    txt_size: int = 0
    txt_dim: int = 0
    cond_top_only: int = 0
    use_softplus: int = 0
    use_swiglu: int = 0
    use_bias: int = 1
    use_qk_norm: int = 0
    use_post_norm: int = 0
    use_final_norm: int = 0
    norm_type: str = "layer_norm"
    soft_clip: float = 0.0
    seq_order: str = "R2L"
    learnable_self_denoiser: int = 0
    conditional_denoiser: int = 0
    temporal_causal: int = 0
    top_block_channels: int | None = None
    shallow_block_local: int = 0
    denoiser_window: int | None = None
    local_attn_window: int | None = None
    hf_style_rope: int = 0           # rotate (first half, second half) pairs instead of interleaved ones
    expansion: float = 4.0
    # official non-architecture keys found in the same file; kept for the pipeline (vae, text, cfg...)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, allow_official_extras: bool = True) -> "ModelConfig":
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = dict(d.get("extra", {}) or {})
        for k, v in d.items():
            if k == "extra":
                continue
            if k in names:
                kwargs[k] = v
            elif allow_official_extras and k in OFFICIAL_NON_MODEL_KEYS:
                extra[k] = v
            else:
                raise ConfigError(f"unknown config key {k!r} (known model keys: {', '.join(sorted(names))})")
        cfg = cls(**kwargs, extra=extra)
        cfg._normalise()
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d

    def _normalise(self) -> None:
        lpb = self.layers_per_block
        if isinstance(lpb, str):  # official YAML writes "2 2 2 2 2 24"
            lpb = [int(v) for v in lpb.replace(",", " ").split()]
        elif isinstance(lpb, int):
            lpb = [lpb]
        self.layers_per_block = [int(v) for v in lpb]
        for name in ("rope", "sos", "cond_top_only", "use_softplus", "use_swiglu", "use_bias", "use_qk_norm",
                     "use_post_norm", "use_final_norm", "learnable_self_denoiser", "conditional_denoiser",
                     "temporal_causal", "shallow_block_local", "hf_style_rope"):
            setattr(self, name, int(getattr(self, name)))
        self.soft_clip = float(self.soft_clip or 0.0)
        for name in ("denoiser_window", "local_attn_window", "top_block_channels", "num_heads", "num_kv_heads",
                     "pt_seq_len"):
            v = getattr(self, name)
            setattr(self, name, None if v in (None, 0, "None", "none") else int(v))

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.blocks < 1:
            bad("blocks must be >= 1")
        if len(self.layers_per_block) not in (1, self.blocks):
            bad(f"layers_per_block has {len(self.layers_per_block)} entries; expected 1 or blocks={self.blocks}")
        if self.layers_per_block_full[-1] < 1:
            bad("the deep (last) block needs at least one layer")
        if self.img_size % self.patch_size:
            bad(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.norm_type not in ("layer_norm", "rms_norm", "none"):
            bad(f"norm_type must be layer_norm, rms_norm or none, not {self.norm_type!r}")
        if self.seq_order not in ("R2L", "L2R"):
            bad(f"seq_order must be 'R2L' or 'L2R', not {self.seq_order!r}")
        if self.local_attn_window and not self.shallow_block_local:
            bad("local_attn_window requires shallow_block_local")
        if self.shallow_block_local and not self.cond_top_only:
            bad("shallow_block_local requires cond_top_only")
        if self.cond_top_only and self.txt_size <= 0:
            bad("cond_top_only requires txt_size > 0")
        if self.temporal_causal and self.seq_order != "L2R":
            bad("temporal_causal requires seq_order L2R")
        for name, width in (("channels", self.channels), ("top_block_channels", self.top_channels)):
            heads = self.num_heads if self.num_heads is not None else width // self.head_dim
            if self.num_heads is None and width % self.head_dim:
                bad(f"{name}={width} is not a multiple of head_dim={self.head_dim}")
            kv = self.num_kv_heads or heads
            if heads % kv:
                bad(f"num_heads={heads} is not a multiple of num_kv_heads={kv}")
        if self.rope and self.head_dim % 4:
            bad("RoPE needs head_dim divisible by 4")
        if self.rope and self.txt_size > 0 and (self.head_dim // 2 - 8 < 0 or (self.head_dim // 2 - 8) % 2):
            bad(f"RoPE with text uses 8 frequencies for the text/frame axis: head_dim/2 - 8 must be even and >= 0 "
                f"(head_dim={self.head_dim})")
        if self.rope and self.temporal_causal and self.txt_size <= 0:
            bad("RoPE for video needs txt_size > 0: the frame axis shares the text frequencies")

    # ---- derived ------------------------------------------------------------------------------
    @property
    def layers_per_block_full(self) -> list[int]:
        lpb = self.layers_per_block
        return lpb * self.blocks if len(lpb) == 1 else list(lpb)

    @property
    def top_channels(self) -> int:
        return self.top_block_channels or self.channels

    @property
    def token_channels(self) -> int:
        return self.channel_size * self.patch_size ** 2

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def rope_pt_seq_len(self) -> int:
        return self.pt_seq_len or self.img_size // self.patch_size

    @property
    def is_video_model(self) -> bool:
        return bool(self.temporal_causal or self.shallow_block_local)



def unknown_keys(cls, d: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(unknown, known) key names of mapping `d` for dataclass `cls`, sorted: every typed config rejects
    unknown keys with its own message."""
    known = {f.name for f in fields(cls)}
    return sorted(set(d) - known), sorted(known)


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 without base-60 numbers (`1:1` must stay the aspect ratio "1:1", not the integer 61) and
    with `1e-3` read as a float, as people write it (plain YAML 1.1 reads it as a string)."""


_YamlLoader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag not in (
    "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
    r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Our YAML reading, for every config file (ours and the official ones)."""
    return yaml.load(text, Loader=_YamlLoader)


def load_official_yaml(path: str | Path) -> dict[str, Any]:
    """Read an official config file (`arguments:` list of one-key dicts) or a plain mapping."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    data = load_yaml(path.read_text())
    if isinstance(data, dict) and "arguments" in data:
        out: dict[str, Any] = {}
        for item in data["arguments"]:
            if not isinstance(item, dict):
                raise ConfigError(f"{path}: each entry under 'arguments:' must be a 'key: value' pair, got {item!r}")
            out.update(item)
        return out
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping or an official 'arguments:' list")
    return data


def official_to_model_dict(args: Mapping[str, Any], latent_factor: int | None = None) -> dict[str, Any]:
    """Map a full official argument set to model keys. The official YAML gives `img_size` in pixels and
    the autoencoder factor is applied at load time; pass `latent_factor` to do the same here."""
    d = dict(args)
    if latent_factor:
        d["img_size"] = int(d["img_size"]) // latent_factor
    return d


# Named sizes, DiT-style. Values are the official ones where the paper gives them.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    # 3B text-to-image, 256px through SD-VAE (32x32x4 latent), flan-t5-xl text
    "starflow-3b-t2i-256": dict(channel_size=4, img_size=32, patch_size=1, channels=3072, blocks=6,
                                layers_per_block=[2, 2, 2, 2, 2, 24], head_dim=64, rope=1, sos=1, txt_size=128,
                                txt_dim=2048, cond_top_only=1, use_softplus=1, use_final_norm=1, soft_clip=4.0,
                                seq_order="L2R"),
    # 7B text-to-video 480p through Wan2.2 (48 latent channels), flan-t5-xl text
    "starflow-v-7b-t2v-480p": dict(channel_size=48, img_size=40, patch_size=1, channels=3072, top_block_channels=4096,
                                   blocks=6, layers_per_block=[2, 2, 2, 2, 2, 24], head_dim=64, rope=1, sos=1,
                                   txt_size=256, txt_dim=2048, pt_seq_len=32, cond_top_only=1, use_softplus=1,
                                   use_final_norm=1, soft_clip=4.0, seq_order="L2R", learnable_self_denoiser=1,
                                   conditional_denoiser=1, denoiser_window=10, temporal_causal=2,
                                   shallow_block_local=1),
}
