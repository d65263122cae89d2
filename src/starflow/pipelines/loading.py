"""Pipeline folders: writing them and reading them back (ours, `starflow train` exports, official files).

A pipeline folder (version 2) is
- `pipeline.json`: kind, text encoder and autoencoder specs, generation defaults (PipelineSpec),
- `flow/`: the flow as a model folder (StarFlow.save_pretrained: config.json + model.safetensors),
- `input_transform.json` (+ its tensors) when the flow was trained behind a fixed input transform,
- `training.json` when `starflow train` exported it (the run's config; not needed to generate).
Also read: version-1 folders (the model config inside pipeline.json, weights in `flow.safetensors`) and
starflow 0.1 training exports (`config.json` with the run's config + `model.safetensors`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError, official_vae_factor
from ..flow.io import (WeightsFile, atomic_folder, checkpoint_txt_dim, load_flow, load_model, read_config_file,
                       read_model_config, write_model_files, write_weights)
from ..flow.model import StarFlow
from ..flow.transforms import load_transform
from .components import copy_component, load_autoencoder_spec, load_text_encoder_spec, spec_of
from .spec import PipelineSpec, official_kind, read_spec, spec_from_official, spec_from_training

__all__ = ["PIPELINE_FILE", "FLOW_DIR", "TRAINING_FILE", "save_pipeline", "read_pipeline_folder",
           "official_parts"]

PIPELINE_FILE = "pipeline.json"
FLOW_DIR = "flow"
TRAINING_FILE = "training.json"
TRANSFORM_INFO_FILE = "input_transform.json"   # a fixed input transform the flow was trained behind (if any)
_V1_FLOW_FILE = "flow.safetensors"


def save_pipeline(pipe, directory: str | Path, copy_components: bool = False,
                  extra_files: dict[str, str] | None = None) -> Path:
    """Write `pipe` as a pipeline folder, atomically. Text encoder and autoencoder are written as their specs;
    with copy_components a spec naming a local folder has that folder copied in and referenced as `./name`."""
    spec = pipe.spec
    if pipe.config.txt_dim > 0 and spec.text_encoder is None:
        raise ValueError("cannot save: the text encoder has no spec (pass text_encoder_spec= to the pipeline)")
    if spec.autoencoder is None and pipe.autoencoder is not None \
            and type(pipe.autoencoder).__name__ != "IdentityAutoencoder":
        raise ValueError("cannot save: the autoencoder has no spec (pass autoencoder_spec= to the pipeline)")
    directory = Path(directory)
    with atomic_folder(directory) as tmp:
        if copy_components:
            # copied into the final folder's name: `./name` is resolved against the folder when loading
            spec.text_encoder = copy_component(spec.text_encoder, tmp, "text_encoder")
            spec.autoencoder = copy_component(spec.autoencoder, tmp, "autoencoder")
        (tmp / FLOW_DIR).mkdir()
        write_model_files(tmp / FLOW_DIR, pipe.config, pipe.flow.state_dict())
        tr = pipe.input_transform
        if tr is not None:
            if tr.tensors():
                write_weights(tmp / tr.info()["file"], tr.tensors())
            (tmp / TRANSFORM_INFO_FILE).write_text(json.dumps(tr.info(), indent=2))
        if pipe.training_info is not None:
            (tmp / TRAINING_FILE).write_text(json.dumps(pipe.training_info, indent=2, default=str))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        spec.write_json(tmp / PIPELINE_FILE)
    return directory


def read_pipeline_folder(directory: str | Path, *, dtype=None, device=None
                         ) -> tuple[PipelineSpec, StarFlow, Any, dict | None]:
    """(spec, flow with its weights, input transform or None, the training run's info or None) from any
    pipeline folder we know. The training info is training.json as `starflow train` wrote it (its "train"
    entry is the run's TrainConfig as a mapping): plain data, for whoever wants to know how it was trained.
    The flow is read tensor by tensor into `dtype` (default float32) on `device` (flow.weights)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (a pipeline directory has {PIPELINE_FILE}: "
                                f"save_pretrained, `starflow convert` and `starflow train` (its final/ folder) "
                                f"write one)")
    if (directory / PIPELINE_FILE).exists():
        spec = read_spec(directory / PIPELINE_FILE)
        if (directory / FLOW_DIR).is_dir():
            flow = load_model(directory / FLOW_DIR, dtype=dtype, device=device)
        else:                                         # version 1: the model inside pipeline.json
            if spec.model is None:
                raise FileNotFoundError(f"{directory / FLOW_DIR} not found: the pipeline folder has no flow")
            weights = directory / _V1_FLOW_FILE
            if not weights.exists():
                raise FileNotFoundError(f"{weights} not found")
            flow = load_flow(spec.model_config(), weights, dtype=dtype, device=device)
        info_file = directory / TRANSFORM_INFO_FILE
        transform = load_transform(_read_json(info_file), directory) if info_file.exists() else None
        training = _read_json(directory / TRAINING_FILE) if (directory / TRAINING_FILE).exists() else None
        return spec, flow.eval(), transform, training
    if (directory / "config.json").exists():          # starflow 0.1 training export
        info = _read_json(directory / "config.json")
        if not isinstance(info, dict) or "train" not in info:
            if (directory / "final" / PIPELINE_FILE).exists():
                raise FileNotFoundError(f"{directory} is a training run folder: its model is {directory / 'final'}")
            raise FileNotFoundError(f"{directory / PIPELINE_FILE} not found: not a pipeline directory")
        config = read_model_config(directory)
        flow = load_flow(config, directory / "model.safetensors", dtype=dtype, device=device)
        return (spec_from_training(info["train"], config), flow,
                load_transform(info.get("input_transform"), directory), info)
    if (directory / "final").is_dir():
        raise FileNotFoundError(f"{directory} is a training run folder: its trained model is {directory / 'final'}")
    if (directory / "checkpoints").is_dir() or (directory / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{directory} is a training run folder without its final/ model yet: let the run "
                                f"finish, or continue it with `starflow train --resume` (it exports final/ at the end)")
    raise FileNotFoundError(f"{directory / PIPELINE_FILE} not found: not a pipeline directory")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable JSON file ({e})") from None


def official_parts(config: str | Path | dict, checkpoint, *, text_encoder_spec: str | None,
                   autoencoder_spec: str | None, text_encoder=None, autoencoder=None, torch_dtype=None, device=None,
                   check_kind=None):
    """Official YAML (or one of our configs/*.yaml) + checkpoint -> (spec, flow, text encoder, autoencoder),
    strictly loaded. The same reading of the config as `starflow.load_official` (flow.io.model_config_for):
    an official file gives img_size in pixels and no txt_dim, so the components are loaded first and checked
    against what the checkpoint was trained with (text width, the autoencoder's spatial factor) before the
    weights are read. `check_kind(kind, where)` is called as soon as the kind is known."""
    where = str(config) if isinstance(config, (str, Path)) else "official config"
    args = read_config_file(config) if isinstance(config, (str, Path)) else dict(config)
    if "arguments" in args and isinstance(args["arguments"], list):   # the official layout given as a mapping
        args = {k: v for item in args["arguments"] for k, v in dict(item).items()}
    weights = WeightsFile(checkpoint) if checkpoint is not None else None   # names and shapes: no data read yet
    if "model" in args and "kind" in args:          # our format: the architecture is spelled out
        spec = PipelineSpec.from_dict(args, where=where)
        if check_kind is not None:
            check_kind(spec.kind, where)
        spec.text_encoder = text_encoder_spec or spec_of(text_encoder) or spec.text_encoder
        spec.autoencoder = autoencoder_spec or spec_of(autoencoder) or spec.autoencoder
    else:
        from .spec import official_autoencoder_spec, official_text_spec

        if check_kind is not None:
            check_kind(official_kind(args), where)
        te_spec = text_encoder_spec or spec_of(text_encoder) or official_text_spec(args.get("text"))
        ae_spec = autoencoder_spec or spec_of(autoencoder) or official_autoencoder_spec(args.get("vae"))
        if text_encoder is None and te_spec is not None:
            text_encoder = load_text_encoder_spec(te_spec, int(args.get("txt_size", 1)), dtype=torch_dtype)
        if autoencoder is None:
            autoencoder = load_autoencoder_spec(ae_spec, dtype=torch_dtype)
        factor = int(getattr(autoencoder, "spatial_factor", 1)) if autoencoder is not None else 1
        _check_components(args, where, weights, text_encoder, te_spec, factor, ae_spec)
        spec = spec_from_official(args, spatial_factor=factor, txt_dim=int(text_encoder.dim) if text_encoder else 0,
                                  text_encoder=te_spec, autoencoder=ae_spec,
                                  shapes=weights.shapes if weights is not None else None)
    cfg = spec.model_config()
    if weights is None:
        flow = StarFlow(cfg).to(device=device, dtype=torch_dtype).eval()
    else:
        flow = load_flow(cfg, weights, dtype=torch_dtype, device=device)
    return spec, flow, text_encoder, autoencoder


def _check_components(args: dict, where: str, weights, text_encoder, te_spec, factor: int, ae_spec) -> None:
    """What an official checkpoint was trained with against the components given: errors that name them."""
    trained = checkpoint_txt_dim(weights.shapes) if weights is not None else None
    if trained is not None and text_encoder is not None and int(text_encoder.dim) != trained:
        raise ConfigError(f"text encoder {te_spec} gives {text_encoder.dim}-dim embeddings, but the checkpoint "
                          f"expects {trained}-dim ones (it was trained with {args.get('text') or 'another encoder'}): "
                          f"give a text encoder of width {trained} (--text-encoder t5:/path/to/flan-t5-xl)")
    vae = args.get("vae")
    known = official_vae_factor(vae)
    if vae not in (None, "") and known not in (None, 1) and factor != known:
        raise ConfigError(f"autoencoder {ae_spec} has spatial factor {factor}, but {where} was trained behind "
                          f"{vae} (factor {known}): the model would sample another latent grid than it was trained "
                          f"on; give that autoencoder (--autoencoder sd-vae:/path or wan:/path)")
