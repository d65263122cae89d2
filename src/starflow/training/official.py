"""The official train.py settings of an official YAML (`model: {official_yaml: ...}`) in our training config.

Every official setting that is not part of the model is either mapped onto our TrainConfig (where it means
the same thing in our trainer) or named, with the reason, in one warning saying that it is ignored. A value
the user's own config sets wins over the official file's. Any key in neither list is an error (ModelConfig's
reading of official files rejects it).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

from ..config import OFFICIAL_SAMPLE_KEYS, ConfigError, ModelConfig, load_official_yaml, unknown_keys

__all__ = ["MAPPED", "IGNORED", "apply_official_settings"]


def _frames(v: Any) -> int:
    return int(str(v).split(":")[0])


def _text(v: Any) -> str:
    from ..conditioning import text_spec_from_official
    return text_spec_from_official(str(v))


def _vae(v: Any) -> str | None:
    from ..autoencoders import autoencoder_spec_from_official
    spec = autoencoder_spec_from_official(None if v is None else str(v))
    return None if spec == "identity" else spec


def _first(v: Any) -> float:
    return float(v[0] if isinstance(v, (list, tuple)) else v)      # train.py's cfg takes several values


# official key -> (our dotted key, value converter taking (value, all official args)); a None is not set
MAPPED: dict[str, tuple[str, Callable[[Any, dict], Any]]] = {
    "lr": ("optim.lr", lambda v, a: float(v)),
    "min_lr": ("optim.min_lr", lambda v, a: float(v)),
    "warmup_steps": ("optim.warmup_steps", lambda v, a: int(v)),      # official None: one epoch (ours: keep ours)
    # official batch_size is one loader batch, `acc` of them per update: our global batch per step is the product
    "batch_size": ("optim.batch_size", lambda v, a: int(v) * max(int(a.get("acc") or 1), 1)),
    "acc": ("optim.grad_accum", lambda v, a: max(int(v), 1)),
    "grad_clip": ("optim.grad_clip", lambda v, a: float(v)),
    # official grad_skip: after step 100, skip updates whose gradient norm exceeds grad_clip (our grad_skip_after)
    "grad_skip": ("optim.grad_skip_threshold", lambda v, a: float(a.get("grad_clip") or 0.0) if int(v) else 0.0),
    "latent_norm_regularization": ("optim.latent_norm_reg", lambda v, a: float(v)),
    "gradient_checkpoint": ("optim.grad_checkpoint", lambda v, a: bool(int(v))),
    "weight_decay": ("optim.weight_decay", lambda v, a: float(v)),
    "noise_std": ("data.noise_std", lambda v, a: None if a.get("noise_type") == "uniform" else float(v)),
    "noise_type": ("data.dequantize", lambda v, a: True if v == "uniform" else None),
    "drop_label": ("data.caption_dropout", lambda v, a: float(v)),
    "text": ("data.text_encoder", lambda v, a: _text(v)),
    "txt_size": ("data.txt_size", lambda v, a: int(v)),              # a model key our data section repeats
    "img_size": ("data.image_size", lambda v, a: int(v)),            # pixels, as data.image_size
    "vae": ("data.autoencoder", lambda v, a: _vae(v)),
    "vid_size": ("data.num_frames", lambda v, a: _frames(v)),
    "train_seed": ("seed", lambda v, a: int(v)),
    "cfg": ("log.sample_guidance", lambda v, a: _first(v)),           # guidance of the training-time samples
    "logdir": ("log.out_dir", lambda v, a: str(v)),
    "fsdp": ("dist.strategy", lambda v, a: "fsdp" if int(v) else None),   # one process: nothing to shard
}

_DATA = "the data comes from our data section (data.dataset, data.path)"
_TEMPLATES = ("our trainer conditions on the caption alone, without the official prompt templates (a model "
              "trained with them needs them at sampling)")
_STEPS = "our run length and cadence count steps: optim.max_steps / max_seconds, log.ckpt_every, log.sample_every"
_SAMPLING = "a sampling setting (starflow generate / evaluate)"
_NOT_IMPLEMENTED = "a training mode starflow does not implement"
IGNORED: dict[str, str] = {
    **dict.fromkeys(["data", "dataset", "wds", "caption_column", "secondary_dataset", "secondary_img_size",
                     "secondary_vid_size", "secondary_batch_size", "secondary_ratio", "num_workers"], _DATA),
    "no_flip": "our datasets never flip",
    **dict.fromkeys(["mix_aspect", "fps_cond", "cond_noise_level"], _TEMPLATES),
    **dict.fromkeys(["epochs", "epoch_length", "save_every", "sample_freq", "warmup"], _STEPS),
    **dict.fromkeys(["resume", "resume_path", "resume_epoch"], "resume a run with resume=true (its log.out_dir)"),
    "dry_run": "run a short training with optim.max_steps instead",
    **dict.fromkeys(["drop_image", "last_frame_cond", "video_to_video"], _NOT_IMPLEMENTED),
    **dict.fromkeys(["fp8", "use_8bit_adam", "loss_scaling"], "precision is optim.precision (fp32, or bf16 autocast)"),
    "compile": "our trainer runs eagerly",
    "fsdp_text_encoder": "the text encoder runs once per distinct caption, unsharded",
    **dict.fromkeys(["gradient_checkpoint_mlp", "use_checkpoint", "use_checkpoint_mlp"],
                    "optim.grad_checkpoint checkpoints whole layers"),
    "ema": "an older official name: set optim.ema",
    "wandb_name": "metrics go to log.out_dir (metrics.jsonl)",
    "model_config_path": "the official YAML is model.official_yaml",
    "finetuned_vae": "a decoder chosen at sampling time",
    "vae_decoder_factor": "a decoder setting used at sampling time",
    **dict.fromkeys(["nvp", "adaln", "use_mm_attn", "use_pretrained_lm", "noise_embed_denoiser"],
                    "an official architecture option at its only value starflow implements"),
    **dict.fromkeys(sorted(OFFICIAL_SAMPLE_KEYS | {"num_samples", "sample_batch_size"}), _SAMPLING),
}


def _is_set(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{p} is not a section")
    node[last] = value


def apply_official_settings(raw: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`raw` (a training config mapping) with the settings of its `model.official_yaml` filled in where the
    mapping does not set them; warns once naming the official settings that are ignored, and why."""
    model = raw.get("model")
    if not isinstance(model, dict) or "official_yaml" not in model:
        return raw
    path = Path(str(model["official_yaml"]))
    args = load_official_yaml(path)
    unknown, known = unknown_keys(ModelConfig, {k: v for k, v in args.items() if k not in MAPPED and k not in IGNORED})
    if unknown:
        raise ConfigError(f"{path}: unknown official setting(s) {', '.join(map(str, unknown))} (neither a model key "
                          f"nor an official train.py / sample.py setting)")
    mapped, ignored = [], {}
    for key, value in args.items():
        if key in MAPPED:
            target, convert = MAPPED[key]
            if value is None or _is_set(raw, target):
                continue
            try:
                new = convert(value, args)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{path}: official {key}={value!r} cannot be read ({e})") from None
            if new is not None:
                _set(raw, target, new)
                mapped.append(f"{key} -> {target}")
        elif key in IGNORED:
            ignored.setdefault(IGNORED[key], []).append(key)
    if args.get("text") and not _is_set(raw, "data.condition"):   # official training is always text-conditioned
        _set(raw, "data.condition", "text")
        mapped.append("text -> data.condition")
    if ignored:
        reasons = "; ".join(f"{', '.join(keys)}: {why}" for why, keys in ignored.items())
        warnings.warn(f"{path}: official settings ignored by starflow train ({reasons}). Used: "
                      f"{', '.join(mapped) if mapped else 'none'}", UserWarning, stacklevel=3)
    return raw
