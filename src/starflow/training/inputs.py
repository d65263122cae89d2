"""From a data config to model inputs: datasets, conditioning table, model config, noisy training batches.

All randomness of a batch (dequantisation / noise, caption dropout, noise levels) is drawn for the
*global* micro-batch from a generator seeded by (seed, step, micro-batch) and then sliced per process.
So a batch does not depend on the number of processes, nor on whether the run was resumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import MODEL_SIZES, ConfigError, ModelConfig, check_field_ranges, load_official_yaml
from ..strict import read_fields
from ..data import (Batch, DigitsDataset, ImageFolderDataset, MovingDigitsDataset, QuantizedDataset, Subset,
                    VideoFolderDataset, dequantize, to_unit_range)
from ..flow.likelihood import bits_per_dim
from ..flow.transforms import Gaussianize, LogitTransform
from .config import DataConfig, TrainConfig

__all__ = ["build_datasets", "Conditioner", "resolve_model_config", "InputPipeline", "Inputs", "Draws",
           "step_generator", "load_autoencoder_for", "build_transform"]


def step_generator(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed,) + tuple(key)) % (2 ** 62))


def build_datasets(data: DataConfig, multiple: int = 1
                   ) -> tuple[QuantizedDataset, QuantizedDataset | None, QuantizedDataset | None]:
    """(train set, held-out test set or None, validation set or None). `multiple`: autoencoder factor x patch
    size (bucket sides). The validation items are a fixed random subset of the training data, removed from it."""
    train, held = _base_datasets(data, multiple)
    if data.val_items <= 0:
        return train, held, None
    if data.val_items >= len(train):
        raise ConfigError(f"data.val_items={data.val_items} leaves no training data ({len(train)} items)")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    return Subset(train, perm[data.val_items:].sort().values), held, Subset(train, perm[:data.val_items].sort().values)


def _base_datasets(data: DataConfig, multiple: int) -> tuple[QuantizedDataset, QuantizedDataset | None]:
    if data.dataset == "digits":
        train = DigitsDataset("train", data.image_size)
        held = DigitsDataset("test", data.image_size) if data.eval_split else None
    elif data.dataset == "moving_digits":
        train = MovingDigitsDataset("train", data.num_videos, data.canvas, data.num_frames, speed=data.speed,
                                    start=data.start, align=data.align, motion=data.motion)
        held = (MovingDigitsDataset("test", max(1, data.num_videos // 8), data.canvas, data.num_frames,
                                    speed=data.speed, start=data.start, align=data.align, motion=data.motion)
                if data.eval_split else None)
    elif data.dataset == "image_folder":
        train = ImageFolderDataset(data.path, data.image_size, data.channels, data.aspect_ratios, multiple,
                                   require_captions=data.condition == "text", cache=data.cache,
                                   skip_unreadable=data.skip_unreadable)
        held = None
    else:
        train = VideoFolderDataset(data.path, data.image_size, data.num_frames, data.frame_stride,
                                   channels=data.channels, aspect_ratios=data.aspect_ratios, multiple=multiple,
                                   require_captions=data.condition == "text", cache=data.cache,
                                   skip_unreadable=data.skip_unreadable)
        held = None
    return train, held


def load_autoencoder_for(data: DataConfig, device: torch.device):
    """None for pixel space; otherwise a frozen autoencoder through `starflow.autoencoders`."""
    if data.autoencoder in (None, "", "identity", "none"):
        return None
    from ..autoencoders import load_autoencoder  # lazy: optional heavy dependencies

    return load_autoencoder(data.autoencoder, device=device).requires_grad_(False).eval()


class Conditioner:
    """Embeddings of labels or captions, computed once per distinct value (digits have 10 captions) so
    that text encoding costs nothing per step. Dropped items get the null embedding."""

    def __init__(self, mode: str, spec: str, txt_size: int, dataset: QuantizedDataset, device: torch.device):
        self.mode, self.device = mode, device
        self.dim, self.txt_size, self.spec = 0, 0, None
        if mode == "none":
            return
        from ..conditioning import load_text_encoder  # lazy: loads transformers only when needed

        if mode == "labels":
            if dataset.num_classes < 1 or bool((dataset.labels < 0).any()):
                raise ConfigError("data.condition=labels needs a class for every item (class folders, digits)")
            self.spec, self.txt_size = f"labels:{dataset.num_classes}", 1
            self.encoder = load_text_encoder(self.spec, 1)
            table = self.encoder.encode(list(range(dataset.num_classes)))          # (K, 1, K+1)
            self.table = torch.cat([table, self.encoder.null(1)]).float().to(device)  # row K: null
        else:
            self.spec, self.txt_size = spec, txt_size
            self.encoder = load_text_encoder(spec, txt_size)
            self.cache: dict[str, torch.Tensor] = {}
            self._encode(sorted(set(dataset.captions))[:20000])
            self.null_row = self.encoder.null(1)[0].float().to(device)            # (L, D)
        self.dim = int(self.encoder.dim)

    def _encode(self, captions: list[str]) -> None:
        todo = [c for c in dict.fromkeys(captions) if c not in self.cache]
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            emb = self.encoder.encode(chunk).float().to(self.device)               # (n, L, D)
            self.cache.update(zip(chunk, emb))

    @property
    def spec_info(self) -> dict:
        return {"mode": self.mode, "spec": self.spec, "txt_size": self.txt_size, "dim": self.dim}

    def embed(self, captions: list[str], labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor | None:
        """(B, L, D) condition; rows where `drop` is True get the null embedding."""
        if self.mode == "none":
            return None
        if self.mode == "labels":
            idx = torch.where(drop, torch.full_like(labels, self.table.size(0) - 1), labels)
            return self.table[idx.to(self.table.device)]
        self._encode(captions)
        rows = [self.null_row if d else self.cache[c] for c, d in zip(captions, drop.tolist())]
        return torch.stack(rows)

    def prompts(self, prompts: list[str] | list[int]) -> torch.Tensor | None:
        """Embeddings for sampling: class indices (labels) or captions (text)."""
        if self.mode == "none":
            return None
        if self.mode == "labels":
            return self.table[torch.as_tensor(prompts, dtype=torch.long, device=self.table.device)]
        self._encode(list(prompts))
        return torch.stack([self.cache[p] for p in prompts])

    def null(self, batch: int) -> torch.Tensor | None:
        if self.mode == "none":
            return None
        row = self.table[-1] if self.mode == "labels" else self.null_row
        return row.unsqueeze(0).expand(batch, *row.shape).contiguous()


def resolve_model_config(cfg: TrainConfig, item_shape: tuple[int, ...], cond: Conditioner, ae) -> ModelConfig:
    """The `model:` section, completed from the data: channels and side (through the autoencoder),
    and the condition's token count and width. Explicit values that contradict the data are errors."""
    section = dict(cfg.model)   # its keys were checked when the TrainConfig was built (check_model_section)
    d: dict = {}
    factor = ae.spatial_factor if ae is not None else 1
    official = "official_yaml" in section
    if official:
        path = Path(str(section.pop("official_yaml")))
        d.update(load_official_yaml(path))
        if "img_size" in d:  # official files give the side in pixels; the model reads latents
            d["img_size"] = int(d["img_size"]) // factor
    if "size" in section:
        name = section.pop("size")
        if name not in MODEL_SIZES:
            raise ConfigError(f"unknown model size {name!r}; known: {', '.join(MODEL_SIZES)}")
        d.update(MODEL_SIZES[name])
    # the values given here, typed and in range, before they are compared with the data
    if isinstance(section.get("layers_per_block"), int) and not isinstance(section["layers_per_block"], bool):
        section["layers_per_block"] = [section["layers_per_block"]]        # one count for every block
    section = read_fields(ModelConfig, section, "model")
    check_field_ranges(section)
    d.update(section)
    channels = ae.latent_channels if (ae is not None and ae.latent_channels) else item_shape[-3]
    # with aspect buckets the model's nominal side is that of the square bucket (RoPE handles the rest)
    side = (cfg.data.image_size if cfg.data.aspect_ratios else max(item_shape[-2], item_shape[-1])) // factor
    derived = {"channel_size": channels, "txt_dim": cond.dim}
    for k, v in derived.items():
        if k in d and int(d[k]) != v:
            raise ConfigError(f"model.{k}={d[k]} contradicts the data ({k} must be {v} here)")
        d[k] = v
    d.setdefault("img_size", side)
    if not int(d.get("rope", 1)) and int(d["img_size"]) != side:
        raise ConfigError(f"model.img_size={d['img_size']} but the data gives {side}: learned positions (rope=0) "
                          f"need the exact side")
    if cond.mode in ("none", "labels"):
        tokens = 0 if cond.mode == "none" else 1
        if "txt_size" in section and int(d["txt_size"]) != tokens:
            raise ConfigError(f"model.txt_size={d['txt_size']} contradicts data.condition={cond.mode} (it gives "
                              f"{tokens} token{'s' if tokens != 1 else ''}): leave model.txt_size out")
        d["txt_size"] = tokens
    else:
        d.setdefault("txt_size", cond.txt_size)
        if int(d["txt_size"]) != cond.txt_size:
            raise ConfigError(f"model.txt_size={d['txt_size']} differs from data.txt_size={cond.txt_size}")
    # the official file's training settings were mapped onto data / optim / log, or named as ignored, when the
    # TrainConfig was read (training.official); here they are only kept in `extra`
    return ModelConfig.from_dict(d, official=official, where="model")


@dataclass
class Draws:
    noise: torch.Tensor | None           # (n, ...) uniform (dequantisation) or Gaussian draws
    sigma: torch.Tensor | None           # (n,) noise level per item
    drop: torch.Tensor                   # (n,) uniform: the condition is dropped where < caption_dropout

    def slice(self, start: int, stop: int) -> "Draws":
        cut = (lambda t: None if t is None else t[start:stop])
        return Draws(cut(self.noise), cut(self.sigma), self.drop[start:stop])


@dataclass
class Inputs:
    x: torch.Tensor                      # (b, C, H, W) / (b, T, C, H, W) model input (noisy or dequantised)
    y: torch.Tensor | None               # (b, L, D)
    sigma: torch.Tensor | None           # (b,) noise level per sample (Gaussian noise), else None
    weights: torch.Tensor | None         # (b,) loss weights (noise-level weighting), else None
    logdet: torch.Tensor | None = None   # (b,) log|dx_model/dx| of the input transform (logit), else None


class InputPipeline:
    """Batch -> Inputs for training (random draws keyed by step) and evaluation (keyed by draw index)."""

    def __init__(self, data: DataConfig, seed: int, cond: Conditioner, ae, device: torch.device, rank: int,
                 world: int, transform=None):
        self.data, self.seed, self.cond, self.ae = data, seed, cond, ae
        self.transform = transform  # fixed elementwise input transform (transforms.py), or None
        self.device, self.rank, self.world = device, rank, world
        self._latents: dict[tuple[int, int], torch.Tensor] = {}

    def _clean(self, batch: Batch) -> torch.Tensor:
        """Pixels in [-1, 1], or latents of them (cached per item when allowed)."""
        if self.ae is None:
            return to_unit_range(batch.values, batch.levels).to(self.device)
        idx = [(batch.source, i) for i in batch.indices.tolist()]
        if self.data.cache_latents and all(i in self._latents for i in idx):
            return torch.stack([self._latents[i] for i in idx])
        with torch.no_grad():
            # the cache needs a deterministic encoding: posterior mean; otherwise sample as the official code
            z = self.ae.encode(to_unit_range(batch.values, batch.levels).to(self.device),
                               sample=not self.data.cache_latents).float()
        if self.data.cache_latents:
            self._latents.update(zip(idx, z))
        return z

    def draws(self, g: torch.Generator, global_size: int, shape: tuple[int, ...]) -> "Draws":
        """Every random number of one global batch (items of `shape`), in a fixed order, so that neither the
        number of processes nor of micro-batches changes any sample's draws."""
        data = self.data
        noise = sigma = None
        if data.dequantize:
            noise = torch.rand((global_size,) + shape, generator=g)
        elif data.noise_levels or data.noise_std > 0:
            if data.noise_levels:
                levels = torch.tensor(data.noise_levels, dtype=torch.float32)
                sigma = levels[torch.randint(len(levels), (global_size,), generator=g)]
            else:
                sigma = torch.full((global_size,), float(data.noise_std))
            noise = torch.randn((global_size,) + shape, generator=g)
        drop = torch.rand(global_size, generator=g)
        return Draws(noise, sigma, drop)

    def item_draws(self, seed: int, key: tuple[int, ...], items: Sequence[int], shape: tuple[int, ...]) -> "Draws":
        """Draws for each item from its own generator (seed, *key, item index): an item gets the same draws
        whatever chunk, subset or number of processes it is evaluated in."""
        parts = [self.draws(step_generator(seed, *key, int(i)), 1, shape) for i in items]
        cat = (lambda ts: None if ts[0] is None else torch.cat(ts))
        return Draws(cat([p.noise for p in parts]), cat([p.sigma for p in parts]), torch.cat([p.drop for p in parts]))

    def item_shape(self, batch: Batch) -> tuple[int, ...]:
        """Shape of one model input item (latent shape in latent space)."""
        if self.ae is None:
            return tuple(batch.values.shape[1:])
        return tuple(self.ae.latent_shape((1,) + tuple(batch.values.shape[1:]))[1:])

    def make(self, batch: Batch, draws: "Draws", drop_p: float) -> Inputs:
        """Model inputs for `batch`, using `draws` sliced to exactly these items."""
        b = batch.values.size(0)
        if draws.drop.numel() != b:
            raise ValueError(f"{draws.drop.numel()} draws for a batch of {b}")
        x = self._clean(batch)
        sigma = weights = None
        if self.data.dequantize:
            if self.ae is not None:
                raise ConfigError("dequantisation needs pixel space")
            x = dequantize(batch.values.to(self.device), batch.levels, draws.noise.to(self.device))
        elif draws.sigma is not None:
            sigma = draws.sigma.to(self.device)
            x = x + sigma.view(-1, *[1] * (x.dim() - 1)) * draws.noise.to(self.device)
            if self.data.noise_weighting:
                weights = sigma / self.data.noise_ref
        logdet = None
        if self.transform is not None:
            x, logdet = self.transform.forward(x)
        y = self.cond.embed(batch.captions, batch.labels, draws.drop < drop_p)
        return Inputs(x, y, sigma, weights, logdet)

    def to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> [-1, 1] pixels (undoes the input transform; latents are decoded elsewhere)."""
        return self.transform.inverse(x) if self.transform is not None else x

    def nll_of_data(self, nll_model: torch.Tensor, inp: Inputs) -> torch.Tensor:
        """-log p(x) from -log p(model input): subtract the input transform's log-Jacobian."""
        return nll_model - inp.logdet.double() if inp.logdet is not None else nll_model

    def data_scale(self, levels: int) -> float:
        """x = scale * v + offset for the bits/dim of the original integer data (pixel space only)."""
        return 2.0 / levels if self.data.dequantize else 2.0 / (levels - 1)

    def nll_to_bpd(self, nll: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
        """Per-sample NLL (nats, of x) -> bits/dim of the integer data (of x itself in latent space)."""
        return bits_per_dim(nll, dims, self.data_scale(levels) if self.ae is None else 1.0)


def build_transform(data: DataConfig, train_set) -> LogitTransform | Gaussianize | None:
    """The input transform a data config asks for, fitted on the training set where needed."""
    if data.logit_alpha > 0:
        return LogitTransform(data.logit_alpha)
    if data.gaussianize:
        values = getattr(train_set, "values", None)
        if values is None:  # a Subset (validation split): read its items
            values = torch.stack([train_set.load(i) for i in range(len(train_set))])
        return Gaussianize.fit(values, train_set.levels, data.gaussianize_pseudo_count)
    return None
