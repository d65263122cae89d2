"""Model files: the one place where flow weights and configs are read and written.

Formats
- **model folder** (`StarFlow.save_pretrained` / `from_pretrained`): `config.json` = {"format":
  "starflow-model", "version": 1, "config": ModelConfig} + `model.safetensors`. `starflow train` exports
  one (`final/`, with a `training.json` beside it), and a pipeline folder holds one as `flow/`.
- **state-dict files**: `.safetensors`, or official `.pth` / `.pt` (read with `weights_only`: a pickle
  cannot run code); a training checkpoint's 'model' or 'state_dict' entry is taken.
- **config + state dict** (`load_official`): one route for any config file we read (`model_config_for`): an
  official YAML (`arguments:` list, img_size in pixels, no txt_dim), one of our pipeline configs
  (configs/*.yaml), a model folder's config.json, or such a mapping.
- **conformance / bench files**: a `.pt` dict {"config": official arguments, "state_dict": ...}.
Training checkpoints (training/checkpoint.py) store their tensors with `write_weights` too.
Weights are read tensor by tensor into a model built on the meta device (flow.weights): loading never holds
two copies of a model, and `torch_dtype` / `device` are applied as each tensor is copied.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..config import ConfigError, ModelConfig, load_official_yaml, official_vae_factor
from .model import StarFlow
from .weights import (DEPRECATED_KEYS, DEPRECATED_SUFFIXES, CheckpointError, WeightsFile, empty_model, read_failure,
                      load_weights)

__all__ = ["CheckpointError", "load_state_dict_strict", "build_model", "read_state_dict", "load_official",
           "write_weights", "save_model", "load_model", "read_model_config", "write_model_files",
           "load_conformance_file", "atomic_folder", "atomic_write_text", "clean_atomic_leftovers", "MODEL_CONFIG_FILE",
           "MODEL_WEIGHTS_FILE", "model_config_for", "checkpoint_txt_dim", "read_config_file", "WeightsFile",
           "DEPRECATED_KEYS", "DEPRECATED_SUFFIXES"]

MODEL_FORMAT = "starflow-model"
MODEL_VERSION = 1
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:       # exists, owned by someone else
        return True
    return True


def clean_atomic_leftovers(path: str | Path) -> None:
    """Remove what a killed `atomic_folder(path)` / `atomic_write_text(path)` left beside `path`: its
    `<name>.tmp-<pid>` copy (a whole model, for a folder) when that process is gone, and `<name>.old`, which
    is put back when the kill came between the two renames (so `path` is never lost)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        for prefix in (f"{path.name}.tmp-", f".{path.name}.tmp-"):
            pid = p.name[len(prefix):]
            if not (p.name.startswith(prefix) and pid.isdigit()):
                continue
            if int(pid) == os.getpid() or not _pid_alive(int(pid)):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    old = path.with_name(path.name + ".old")
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


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
        raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(path, e)}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    elif isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    meta = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_meta]
    if meta:
        raise CheckpointError(f"{path}: {len(meta)} entries (e.g. {meta[0]}) are on the meta device: the file holds "
                              f"shapes but no values")
    return sd


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor] | str | Path) -> None:
    """Load a state dict (mapping or file), dropping only the official deprecated buffers; any missing,
    unexpected, misshapen, non-tensor, meta or non-finite entry is a CheckpointError (flow.weights)."""
    load_weights(model, state_dict)


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
    """A model folder, read tensor by tensor into a model of `dtype` on `device` (default: float32, CPU)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder")
    config = read_model_config(directory)
    weights = directory / MODEL_WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found")
    return load_flow(config, WeightsFile(weights), dtype=dtype, device=device)


def load_flow(config: ModelConfig, weights: WeightsFile | str | Path | Mapping[str, torch.Tensor], *,
              dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> StarFlow:
    """A StarFlow of `config` with the weights of `weights`, built without a second copy of them: on the meta
    device, then materialised in `dtype` on `device` and filled tensor by tensor. Eval mode."""
    _check_dtype(dtype)
    weights = weights if isinstance(weights, WeightsFile) else WeightsFile(weights)
    model = empty_model(lambda: StarFlow(config), dtype=dtype, device=device)
    load_weights(model, weights)
    return model.eval()


def _check_dtype(dtype) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"torch_dtype must be a floating torch.dtype such as torch.bfloat16, not {dtype!r}")


# ---- any config + checkpoint: one route ----------------------------------------------------------------
def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping: an official YAML (its `arguments:` list flattened), one of our YAML / JSON
    pipeline configs, or a model folder's config.json."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return data
    return load_official_yaml(path)


def checkpoint_txt_dim(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The text embedding width a checkpoint was trained with (its text projections' input width), if it reads text."""
    dims = {s[1] for k, s in shapes.items() if k.endswith("proj_txt.weight") and len(s) == 2}
    return dims.pop() if len(dims) == 1 else None


def model_config_for(config: ModelConfig | Mapping[str, Any] | str | Path, *,
                     shapes: Mapping[str, tuple[int, ...]] | None = None, spatial_factor: int | None = None,
                     txt_dim: int | None = None, where: str | None = None) -> ModelConfig:
    """The ModelConfig of any config we read (a ModelConfig; a path to, or mapping of, an official YAML, one
    of our pipeline configs, or a model folder's config.json).

    Official files give `img_size` in pixels and no `txt_dim`, both fixed at run time by the components the
    official sampler loads: the side is img_size / spatial_factor (default: the factor of the autoencoder the
    file names in `vae:`), and txt_dim the width the checkpoint's text projections read (`shapes`, the
    checkpoint's names -> shapes), or `txt_dim` (the text encoder's width) when there is no checkpoint."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, (str, Path)):
        where = where or str(config)
        config = read_config_file(config)
    where = where or "model config"
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(config).__name__}")
    d = dict(config)
    if "arguments" in d and isinstance(d["arguments"], list):       # an official YAML read as plain YAML
        flat: dict[str, Any] = {}
        for item in d["arguments"]:
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: each entry under 'arguments:' must be a 'key: value' pair, got {item!r}")
            flat.update(item)
        d = flat
    if d.get("format") == MODEL_FORMAT:                               # a model folder's config.json
        return ModelConfig.from_dict(d.get("config", {}), where=where)
    if "kind" in d and "model" in d:                                  # our pipeline config: the model spelled out
        if not isinstance(d["model"], Mapping):
            raise ConfigError(f"{where}: 'model' must be a mapping of model keys (in latent units)")
        return ModelConfig.from_dict(d["model"], official=d.get("version") == 1, where=f"{where} model")
    return _official_model_config(d, shapes, spatial_factor, txt_dim, where)


def _official_model_config(args: dict[str, Any], shapes, spatial_factor: int | None, txt_dim: int | None,
                           where: str) -> ModelConfig:
    vae = args.get("vae")
    known = official_vae_factor(vae)
    named = known != 1 or (vae not in (None, "") and str(vae).lower() not in ("none", "null"))
    if named and known is not None and spatial_factor is not None and spatial_factor != known:
        raise ConfigError(f"{where}: the autoencoder's spatial factor is {spatial_factor}, but the config's vae "
                          f"{vae!r} has {known}: the model would sample another latent grid than the one it was "
                          f"trained on")
    factor = spatial_factor or known
    if factor is None:
        raise ConfigError(f"{where}: the config names vae {vae!r}, whose spatial factor starflow does not know: "
                          f"give the autoencoder (or spatial_factor=, pixels per latent)")
    if "img_size" in args and factor > 1:
        px = int(args["img_size"])
        if px % factor:
            raise ConfigError(f"official img_size {px} is not a multiple of the autoencoder factor {factor}")
        args["img_size"] = px // factor
    if "txt_dim" not in args:
        trained = checkpoint_txt_dim(shapes) if shapes is not None else None
        if trained is not None and txt_dim is not None and trained != txt_dim:
            raise CheckpointError(f"the text encoder gives {txt_dim}-dim embeddings; the checkpoint expects "
                                  f"{trained} (official text: {args.get('text')})")
        txt_dim = trained if trained is not None else txt_dim
        if txt_dim is None:
            if int(args.get("txt_size") or 0) > 0:
                raise ConfigError(f"{where}: an official config gives no txt_dim (the text encoder's width): give "
                                  f"the checkpoint, or txt_dim= (2048 for google/flan-t5-xl)")
            txt_dim = 0
        args["txt_dim"] = txt_dim
    return ModelConfig.from_dict(args, official=True, where=where)


def build_model(config: ModelConfig | Mapping[str, Any] | str | Path, *, spatial_factor: int | None = None,
                txt_dim: int | None = None) -> StarFlow:
    """A model with fresh weights from any config `model_config_for` reads."""
    return StarFlow(model_config_for(config, spatial_factor=spatial_factor, txt_dim=txt_dim))


def load_official(config: ModelConfig | Mapping[str, Any] | str | Path,
                  state_dict: Mapping[str, torch.Tensor] | str | Path | None = None, *,
                  torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                  spatial_factor: int | None = None, txt_dim: int | None = None) -> StarFlow:
    """Config (official YAML, one of our configs/*.yaml, a dict or a ModelConfig) + state dict (a `.pth` /
    `.safetensors` path or a mapping) -> model in eval mode, in `torch_dtype` (default float32) on `device`.

    The file is read tensor by tensor, so peak memory is about the model's size in `torch_dtype`. Without a
    state dict the model has fresh weights."""
    _check_dtype(torch_dtype)
    weights = WeightsFile(state_dict) if state_dict is not None else None
    cfg = model_config_for(config, shapes=weights.shapes if weights is not None else None,
                           spatial_factor=spatial_factor, txt_dim=txt_dim)
    if weights is None:
        return StarFlow(cfg).to(device=device, dtype=torch_dtype).eval()
    return load_flow(cfg, weights, dtype=torch_dtype, device=device)


def load_conformance_file(path: str | Path) -> dict[str, Any]:
    """A conformance / bench file: a dict with the official `config` and its `state_dict` (and `cases`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {read_failure(path, e)}") from e
    if not isinstance(data, dict) or "config" not in data or "state_dict" not in data:
        raise CheckpointError(f"{path}: expected a dict with 'config' and 'state_dict' (conformance format)")
    return data
