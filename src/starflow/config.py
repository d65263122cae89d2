"""Model configuration under the official argument names.

The official code passes an argparse namespace around; we keep the same key names (so official
YAML files and checkpoints map one to one) in a typed dataclass that rejects unknown keys.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .strict import ConfigError, check_types, from_mapping, unknown_keys

__all__ = ["ModelConfig", "ConfigError", "load_official_yaml", "load_yaml", "MODEL_SIZES", "unknown_keys"]


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

# optional integers the official files write as 0 or "None" when unset
_OPTIONAL_INTS = ("denoiser_window", "local_attn_window", "top_block_channels", "num_heads", "num_kv_heads",
                  "pt_seq_len")


@dataclass
class ModelConfig:
    """Architecture of a STARFlow / STARFlow-V flow, official names and defaults.

    `img_size` is the side length of the model's input (latent or pixel grid), before patchify.
    Built directly or through `from_dict`, a config is checked (types, then `validate`) on construction.
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
    rope: bool = True                # rotary positions (False: learned positions, one table per frame)
    pt_seq_len: int | None = None
    sos: bool = False                # a learned start-of-sequence token heads each block's input
    txt_size: int = 0
    txt_dim: int = 0
    cond_top_only: bool = False      # only the deep block reads the text
    use_softplus: bool = False
    use_swiglu: bool = False
    use_bias: bool = True
    use_qk_norm: bool = False
    use_post_norm: bool = False
    use_final_norm: bool = False
    norm_type: str = "layer_norm"
    soft_clip: float = 0.0
    seq_order: str = "R2L"
    learnable_self_denoiser: bool = False
    conditional_denoiser: bool = False
    # official name and meaning: 0 for images; k > 0 makes a video model causal in time (the deep block sees
    # earlier frames, the shallow ones reverse within a frame) and lets the learnable denoiser look k - 1
    # frames ahead (its block-causal mask); see `is_temporal_causal`
    temporal_causal: int = 0
    top_block_channels: int | None = None
    shallow_block_local: bool = False   # shallow blocks of a video see one frame at a time
    denoiser_window: int | None = None
    local_attn_window: int | None = None
    hf_style_rope: bool = False      # rotate (first half, second half) pairs instead of interleaved ones
    expansion: float = 4.0
    # official non-architecture keys found in the same file; kept for the pipeline (vae, text, cfg...)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        check_types(self)
        self.validate()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, official: bool = False, where: str = "model config"
                  ) -> "ModelConfig":
        """The one way from a mapping to a config. Unknown keys are errors.

        official=True reads the official code's conventions (its YAML files, checkpoints and conformance
        vectors): booleans written 0/1, `layers_per_block` as "2 2 24", 0 or "None" for unset optional
        integers, and its training / sampling keys (OFFICIAL_NON_MODEL_KEYS), kept in `extra`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping of model keys, got {type(d).__name__}")
        d = dict(d)
        extra = dict(d.pop("extra", None) or {})
        if official:
            for k in [k for k in d if k in OFFICIAL_NON_MODEL_KEYS]:
                extra[k] = d.pop(k)
            lpb = d.get("layers_per_block")
            if isinstance(lpb, str):
                d["layers_per_block"] = [int(v) for v in lpb.replace(",", " ").split()]
            elif isinstance(lpb, int) and not isinstance(lpb, bool):
                d["layers_per_block"] = [lpb]
            for k in _OPTIONAL_INTS:
                if k in d and d[k] in (0, "None", "none", "null"):
                    d[k] = None
        elif isinstance(d.get("layers_per_block"), int) and not isinstance(d["layers_per_block"], bool):
            d["layers_per_block"] = [d["layers_per_block"]]     # one count for every block
        return from_mapping(cls, {**d, "extra": extra}, where, official=official)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        for name in ("channel_size", "img_size", "patch_size", "channels", "blocks", "head_dim"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("txt_size", "txt_dim", "temporal_causal"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in _OPTIONAL_INTS:
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"{name} must be >= 1 or unset, got {v}")
        if not (self.soft_clip >= 0 and math.isfinite(self.soft_clip)):
            bad(f"soft_clip must be a finite number >= 0 (0: off), got {self.soft_clip}")
        if not (self.expansion > 0 and math.isfinite(self.expansion)):
            bad(f"expansion must be a finite number > 0, got {self.expansion}")
        if len(self.layers_per_block) not in (1, self.blocks):
            bad(f"layers_per_block has {len(self.layers_per_block)} entries; expected 1 or blocks={self.blocks}")
        if any(n < 0 for n in self.layers_per_block):
            bad(f"layers_per_block entries must be >= 0, got {self.layers_per_block}")
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
        if self.is_temporal_causal and self.seq_order != "L2R":
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
        if self.rope and self.is_temporal_causal and self.txt_size <= 0:
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
    def is_temporal_causal(self) -> bool:
        return self.temporal_causal > 0

    @property
    def is_video_model(self) -> bool:
        return self.is_temporal_causal or self.shallow_block_local


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


# Named sizes, DiT-style. Values are the official ones where the paper gives them.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    # 3B text-to-image, 256px through SD-VAE (32x32x4 latent), flan-t5-xl text
    "starflow-3b-t2i-256": dict(channel_size=4, img_size=32, patch_size=1, channels=3072, blocks=6,
                                layers_per_block=[2, 2, 2, 2, 2, 24], head_dim=64, rope=True, sos=True, txt_size=128,
                                txt_dim=2048, cond_top_only=True, use_softplus=True, use_final_norm=True, soft_clip=4.0,
                                seq_order="L2R"),
    # 7B text-to-video 480p through Wan2.2 (48 latent channels), flan-t5-xl text
    "starflow-v-7b-t2v-480p": dict(channel_size=48, img_size=40, patch_size=1, channels=3072, top_block_channels=4096,
                                   blocks=6, layers_per_block=[2, 2, 2, 2, 2, 24], head_dim=64, rope=True, sos=True,
                                   txt_size=256, txt_dim=2048, pt_seq_len=32, cond_top_only=True, use_softplus=True,
                                   use_final_norm=True, soft_clip=4.0, seq_order="L2R", learnable_self_denoiser=True,
                                   conditional_denoiser=True, denoiser_window=10, temporal_causal=2,
                                   shallow_block_local=True),
}
