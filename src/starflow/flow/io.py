"""Model files: the one place where flow weights and configs are read and written.

Formats
- **model folder** (`StarFlow.save_pretrained` / `from_pretrained`): `config.json` = {"format":
  "starflow-model", "version": 1, "config": ModelConfig} + `model.safetensors`. `starflow train` exports
  one (`final/`, with a `training.json` beside it), and a pipeline folder holds one as `flow/`.
- **state-dict files**: `.safetensors`, or official `.pth` / `.pt` (read with `weights_only`: a pickle
  cannot run code); a training checkpoint's 'model' or 'state_dict' entry is taken.
- **official config + state dict** (`load_official`): an official YAML (`arguments:` list) or dict.
- **conformance / bench files**: a `.pt` dict {"config": official arguments, "state_dict": ...}.
Training checkpoints (training/checkpoint.py) store their tensors with `write_weights` too.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..config import ModelConfig, load_official_yaml
from .model import StarFlow

__all__ = ["CheckpointError", "load_state_dict_strict", "build_model", "read_state_dict", "load_official",
           "write_weights", "save_model", "load_model", "read_model_config", "write_model_files",
           "load_conformance_file", "atomic_folder", "atomic_write_text", "MODEL_CONFIG_FILE", "MODEL_WEIGHTS_FILE"]

MODEL_FORMAT = "starflow-model"
MODEL_VERSION = 1
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"

# Buffers the official model registers but never uses; present in its checkpoints.
DEPRECATED_SUFFIXES = ("attn_mask", "freqs_cos", "freqs_sin")
DEPRECATED_KEYS = ("var",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model: names the file or the offending keys."""


# ---- files written whole or not at all ---------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary one and a rename: a kill leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `folder`; when the block ends without error it replaces `folder`
    (the old one is moved aside first), so a kill at any moment leaves a whole folder, old or new."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- state dicts ----------------------------------------------------------------------------------
def write_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
                  ) -> Path:
    """A state dict as safetensors (CPU, contiguous)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    return path


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


# ---- model folders --------------------------------------------------------------------------------
def write_model_files(folder: Path, config: ModelConfig, state_dict: Mapping[str, torch.Tensor]) -> None:
    """`config.json` + `model.safetensors` into an existing folder (callers make it atomic)."""
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(
        {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": config.to_dict()}, indent=2) + "\n")
    write_weights(folder / MODEL_WEIGHTS_FILE, state_dict, metadata={"format": MODEL_FORMAT})


def save_model(model: StarFlow, directory: str | Path) -> Path:
    with atomic_folder(directory) as tmp:
        write_model_files(tmp, model.config, model.state_dict())
    return Path(directory)


def read_model_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig of a model folder. Folders exported by starflow 0.1 (`config.json` with a "model"
    entry and 0/1 booleans) are read too."""
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a model folder (StarFlow.save_pretrained writes "
                                f"{MODEL_CONFIG_FILE} + {MODEL_WEIGHTS_FILE}; `starflow train` exports one as final/)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if info.get("format") == MODEL_FORMAT:
        if info.get("version") != MODEL_VERSION:
            raise CheckpointError(f"{path}: model format version {info.get('version')} is not supported "
                                  f"(this starflow reads {MODEL_VERSION})")
        return ModelConfig.from_dict(info.get("config", {}), where=str(path))
    if "model" in info:   # starflow 0.1 export
        return ModelConfig.from_dict(info["model"], official=True, where=str(path))
    raise CheckpointError(f"{path} is not a starflow model config (no 'format': {MODEL_FORMAT!r})")


def load_model(directory: str | Path, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> StarFlow:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder")
    model = StarFlow(read_model_config(directory))
    weights = directory / MODEL_WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found")
    load_state_dict_strict(model, read_state_dict(weights))
    return model.to(device=device, dtype=dtype).eval()


# ---- official configs and files -------------------------------------------------------------------
def build_model(config: ModelConfig | Mapping[str, Any] | str | Path) -> StarFlow:
    """A model with fresh weights from a ModelConfig, an official argument mapping or an official YAML."""
    if isinstance(config, (str, Path)):
        config = load_official_yaml(config)
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config, official=True)
    return StarFlow(config)


def load_official(config: ModelConfig | Mapping[str, Any] | str | Path,
                  state_dict: Mapping[str, torch.Tensor] | str | Path | None = None) -> StarFlow:
    """Official config (YAML path, dict or ModelConfig) + official state dict (path or mapping) -> model in eval mode."""
    model = build_model(config)
    if state_dict is not None:
        if isinstance(state_dict, (str, Path)):
            state_dict = read_state_dict(state_dict)
        load_state_dict_strict(model, state_dict)
    return model.eval()


def load_conformance_file(path: str | Path) -> dict[str, Any]:
    """A conformance / bench file: a dict with the official `config` and its `state_dict` (and `cases`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or "config" not in data or "state_dict" not in data:
        raise CheckpointError(f"{path}: expected a dict with 'config' and 'state_dict' (conformance format)")
    return data
