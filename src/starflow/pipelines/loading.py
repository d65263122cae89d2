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

from ..config import load_official_yaml
from ..flow.io import (atomic_folder, load_model, load_state_dict_strict, read_model_config, read_state_dict,
                       write_model_files, write_weights)
from ..flow.model import StarFlow
from ..flow.transforms import load_transform
from .components import copy_component, load_autoencoder_spec, load_text_encoder_spec, spec_of
from .spec import PipelineSpec, read_spec, spec_from_official, spec_from_training

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


def read_pipeline_folder(directory: str | Path) -> tuple[PipelineSpec, StarFlow, Any, dict | None]:
    """(spec, flow with its weights, input transform or None, the training run's info or None) from any
    pipeline folder we know. The training info is training.json as `starflow train` wrote it (its "train"
    entry is the run's TrainConfig as a mapping): plain data, for whoever wants to know how it was trained."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (a pipeline directory has {PIPELINE_FILE}: "
                                f"save_pretrained, `starflow convert` and `starflow train` (its final/ folder) "
                                f"write one)")
    if (directory / PIPELINE_FILE).exists():
        spec = read_spec(directory / PIPELINE_FILE)
        if (directory / FLOW_DIR).is_dir():
            flow = load_model(directory / FLOW_DIR)
        else:                                         # version 1: the model inside pipeline.json
            if spec.model is None:
                raise FileNotFoundError(f"{directory / FLOW_DIR} not found: the pipeline folder has no flow")
            flow = StarFlow(spec.model_config())
            weights = directory / _V1_FLOW_FILE
            if not weights.exists():
                raise FileNotFoundError(f"{weights} not found")
            load_state_dict_strict(flow, read_state_dict(weights))
        info_file = directory / TRANSFORM_INFO_FILE
        transform = load_transform(json.loads(info_file.read_text()), directory) if info_file.exists() else None
        training = json.loads((directory / TRAINING_FILE).read_text()) if (directory / TRAINING_FILE).exists() \
            else None
        return spec, flow.eval(), transform, training
    if (directory / "config.json").exists():          # starflow 0.1 training export
        info = json.loads((directory / "config.json").read_text())
        if not isinstance(info, dict) or "train" not in info:
            if (directory / "final" / PIPELINE_FILE).exists():
                raise FileNotFoundError(f"{directory} is a training run folder: its model is {directory / 'final'}")
            raise FileNotFoundError(f"{directory / PIPELINE_FILE} not found: not a pipeline directory")
        config = read_model_config(directory)
        flow = StarFlow(config)
        load_state_dict_strict(flow, read_state_dict(directory / "model.safetensors"))
        return (spec_from_training(info["train"], config), flow.eval(),
                load_transform(info.get("input_transform"), directory), info)
    if (directory / "final").is_dir():
        raise FileNotFoundError(f"{directory} is a training run folder: its trained model is {directory / 'final'}")
    raise FileNotFoundError(f"{directory / PIPELINE_FILE} not found: not a pipeline directory")


def official_parts(config: str | Path | dict, checkpoint, *, text_encoder_spec: str | None,
                   autoencoder_spec: str | None, text_encoder=None, autoencoder=None):
    """Official YAML (or one of our configs/*.yaml) + official state dict -> (spec, flow, text encoder,
    autoencoder), strictly loaded. The official YAML gives img_size in pixels and no txt_dim: both come from
    the components, which are therefore loaded first."""
    args = load_official_yaml(config) if isinstance(config, (str, Path)) else dict(config)
    where = str(config) if not isinstance(config, dict) else "official config"
    if "model" in args and "kind" in args:          # our format: the architecture is spelled out
        spec = PipelineSpec.from_dict(args, where=where)
        spec.text_encoder = text_encoder_spec or spec_of(text_encoder) or spec.text_encoder
        spec.autoencoder = autoencoder_spec or spec_of(autoencoder) or spec.autoencoder
        flow = StarFlow(spec.model_config())
    else:
        from .spec import official_autoencoder_spec, official_text_spec

        te_spec = text_encoder_spec or spec_of(text_encoder) or official_text_spec(args.get("text"))
        ae_spec = autoencoder_spec or spec_of(autoencoder) or official_autoencoder_spec(args.get("vae"))
        if text_encoder is None and te_spec is not None:
            text_encoder = load_text_encoder_spec(te_spec, int(args.get("txt_size", 1)))
        if autoencoder is None:
            autoencoder = load_autoencoder_spec(ae_spec)
        factor = int(getattr(autoencoder, "spatial_factor", 1)) if autoencoder is not None else 1
        spec = spec_from_official(args, spatial_factor=factor, txt_dim=int(text_encoder.dim) if text_encoder else 0,
                                  text_encoder=te_spec, autoencoder=ae_spec)
        flow = StarFlow(spec.model_config())
    if checkpoint is not None:
        load_state_dict_strict(flow, read_state_dict(checkpoint) if isinstance(checkpoint, (str, Path))
                               else checkpoint)
    return spec, flow.eval(), text_encoder, autoencoder

