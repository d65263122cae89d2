"""What an evaluation reads: the data (a config section like training's), its conditioning, the input protocol.

A model trained by `starflow train` carries its data section: by default it is evaluated on the same data,
under the same protocol (dequantisation or noise, input transform, autoencoder), with the same conditioning
(class labels or captions), so its figure is the training run's own. A pipeline directory or an official
checkpoint has no data section: the data and the protocol are given (`DataConfig` keys), and the pipeline's
text encoder conditions each item on its caption or class.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import ConfigError
from ..data import QuantizedDataset
from ..training.config import DataConfig, TrainConfig
from ..training.inputs import Conditioner, InputPipeline, build_datasets

__all__ = ["eval_data_config", "bpd_inputs", "PipelineConditioner", "condition_of", "train_config_of"]

SPLITS = ("test", "train")


def train_config_of(pipe) -> TrainConfig | None:
    """The TrainConfig of a pipeline exported by `starflow train` (its training.json), else None."""
    info = getattr(pipe, "training_info", None) or {}
    return TrainConfig.from_saved(info["train"]) if info.get("train") else None


def condition_of(pipe) -> str:
    """none | labels | text: how the pipeline's flow is conditioned."""
    if pipe.config.txt_dim == 0:
        return "none"
    return "labels" if str(pipe.text_encoder_spec or "").startswith("labels:") else "text"


def eval_data_config(pipe, overrides: dict[str, Any] | None = None) -> DataConfig:
    """The data section of an evaluation: the trained one (when the pipeline has it) updated by `overrides`
    (DataConfig keys, None values ignored), or one built from the overrides alone."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown data key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    tc = train_config_of(pipe)
    if tc is not None:
        base = dataclasses.asdict(tc.data)
    else:
        if "dataset" not in overrides:
            raise ConfigError("this model carries no training data section: name the data to evaluate on "
                              "(--data digits|moving_digits|image_folder|video_folder)")
        base = {"condition": condition_of(pipe), "noise_std": float(pipe.defaults.noise_std),
                "autoencoder": pipe.autoencoder_spec, "caption_dropout": 0.0}
        if pipe.input_transform is not None:   # a transform the flow was trained behind: dequantised pixels
            base.update(dequantize=True, noise_std=0.0)
        if condition_of(pipe) == "text":
            base["txt_size"] = pipe.config.txt_size
    if overrides.get("dequantize"):
        base["noise_std"], base["noise_levels"] = 0.0, None
    elif overrides.get("noise_std") or overrides.get("noise_levels"):
        base["dequantize"] = False
    base.update(overrides)
    # reading for evaluation: nothing kept in memory; latents cached only within a batch (posterior mean)
    base.update(cache=False, cache_latents=True, val_items=0, eval_split=True)
    data = DataConfig(**base)      # checked on construction
    if data.dataset in ("image_folder", "video_folder") and not data.path:
        raise ConfigError(f"--data {data.dataset} needs --data-path FOLDER")
    return data


class PipelineConditioner:
    """The training Conditioner's interface (`embed`) on a pipeline's own text encoder: each item conditioned
    on its class (label encoders) or caption (text encoders), embeddings computed once per distinct value."""

    def __init__(self, pipe):
        self.pipe, self.mode = pipe, condition_of(pipe)
        self.cache: dict[Any, torch.Tensor] = {}

    def embed(self, captions: list[str], labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "none":
            return None
        if bool(drop.any()):
            raise ValueError("evaluation never drops the condition")
        if self.mode == "labels":
            if bool((labels < 0).any()):
                raise ValueError("this model is class-conditional: the data needs a class for every item "
                                 "(class folders, digits)")
            keys: list[Any] = labels.tolist()
        else:
            keys = list(captions)
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        if todo:
            enc = self.pipe.text_encoder
            with torch.no_grad():
                emb = enc.encode(todo, **self.pipe._cond_kwargs(None, None)).float()
            self.cache.update(zip(todo, emb.to(self.pipe.device)))
        return torch.stack([self.cache[k] for k in keys]).to(self.pipe.dtype)


def bpd_inputs(pipe, data: DataConfig, split: str = "test") -> tuple[QuantizedDataset, InputPipeline]:
    """(the dataset to evaluate, the InputPipeline of its protocol) for a loaded pipeline.

    split: "test" (the held-out split of the bundled data; a folder is taken whole) or "train"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    device = pipe.device
    ae = pipe.autoencoder
    multiple = (pipe.spatial_factor if ae is not None else 1) * pipe.config.patch_size
    train, held, _ = build_datasets(data, multiple)
    dataset = train if split == "train" or held is None else held
    if pipe.kind == "video" and not dataset.is_video:
        raise ValueError(f"a video model cannot be evaluated on images ({data.dataset})")
    if pipe.kind != "video" and dataset.is_video:
        raise ValueError(f"an image model cannot be evaluated on videos ({data.dataset})")
    if train_config_of(pipe) is not None and data.condition == condition_of(pipe):
        # the training run's own conditioning, built the same way: the figure equals its held-out one
        cond = Conditioner(data.condition, data.text_encoder, data.txt_size, train, device)
    else:
        cond = PipelineConditioner(pipe)
    if ae is None and not (data.dequantize or data.noise_std > 0 or data.noise_levels):
        raise ConfigError("bits/dim of pixels needs their dequantisation protocol: --dequantize (uniform, the "
                          "likelihood protocol) or --noise-std SIGMA (Gaussian noise, as the official recipe)")
    inputs = InputPipeline(data, 0, cond, ae, device, 0, 1, pipe.input_transform)
    return dataset, inputs
