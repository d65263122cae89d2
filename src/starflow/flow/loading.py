"""Build a model from an official config and load an official (or our) state dict, strictly."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import ModelConfig, load_official_yaml
from .model import StarFlow

__all__ = ["CheckpointError", "load_state_dict_strict", "build_model", "read_state_dict", "load_official"]

# Buffers the official model registers but never uses; present in its checkpoints.
DEPRECATED_SUFFIXES = ("attn_mask", "freqs_cos", "freqs_sin")
DEPRECATED_KEYS = ("var",)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the offending keys."""


def _is_deprecated(key: str) -> bool:
    return key in DEPRECATED_KEYS or key.rsplit(".", 1)[-1] in DEPRECATED_SUFFIXES


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load, dropping only the official deprecated buffers; any missing, unexpected or misshapen key is an error."""
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not _is_deprecated(k)}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:10]))
    if problems:
        raise CheckpointError("checkpoint does not match the model config: " + " | ".join(problems))
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise CheckpointError(f"checkpoint entry {k} is not a tensor")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"checkpoint entry {k} contains NaN or infinite values")
    model.load_state_dict(sd, strict=True)


def build_model(config: ModelConfig | Mapping[str, Any] | str | Path) -> StarFlow:
    if isinstance(config, (str, Path)):
        config = load_official_yaml(config)
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    return StarFlow(config)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt` (weights_only) or `.safetensors` file; a training checkpoint's 'model' entry is used."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, truncated download...
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    elif isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return sd


def load_official(config: ModelConfig | Mapping[str, Any] | str | Path,
                  state_dict: Mapping[str, torch.Tensor] | str | Path | None = None) -> StarFlow:
    """Official config (YAML path, dict or ModelConfig) + official state dict (path or mapping) -> model in eval mode."""
    model = build_model(config)
    if state_dict is not None:
        if isinstance(state_dict, (str, Path)):
            state_dict = read_state_dict(state_dict)
        load_state_dict_strict(model, state_dict)
    return model.eval()
