"""FID and KID between two sets of pictures, with torchmetrics doing the statistics.

Why torchmetrics: it is maintained (Lightning AI), its FID keeps float64 running sums (streaming, any set size)
and computes the matrix square root through eigenvalues, its KID is the standard polynomial-kernel MMD over
random subsets, and both accept any feature network as a module. So the Inception network is ours to load from a
local file (`inception.py`), with no download path inside the metric. torch-fidelity and clean-fid bundle their
own downloading loaders, and torch-fidelity needs torchvision.

Pictures are read a batch at a time as uint8 (what files hold: generated samples are compared after the same
rounding as the PNGs written). Features are kept in chunk files under a cache folder, so an interrupted run
continues after its last finished chunk, and a reference set's features are computed once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import QuantizedDataset

__all__ = ["PictureSource", "folder_source", "dataset_source", "extract_features", "fid_from_features",
           "kid_from_features", "PrecomputedFeatures"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class PictureSource:
    """A set of uint8 pictures (N, C, H, W), read in order a slice at a time."""
    name: str
    count: int
    read: Callable[[int, int], torch.Tensor] = field(repr=False)
    info: dict = field(default_factory=dict)

    def key(self, extractor: str) -> str:
        blob = json.dumps({"source": self.info, "count": self.count, "extractor": extractor}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def folder_source(root: str | Path, size: tuple[int, int] | None = None, limit: int = 0) -> PictureSource:
    """Every image under `root` (sorted paths), as RGB. Pictures of another size than `size` (default: the first
    picture's) are scaled to cover it and centre-cropped (PIL bicubic / Lanczos)."""
    from PIL import Image

    from ..data.folders import _resize_crop

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"picture folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if limit > 0:
        files = files[:limit]
    if not files:
        raise ValueError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {root}")
    if size is None:
        with Image.open(files[0]) as im:
            size = (im.size[1], im.size[0])
    H, W = size

    def read(start: int, stop: int) -> torch.Tensor:
        out = []
        for f in files[start:stop]:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if (im.size[1], im.size[0]) != (H, W):
                        im = _resize_crop(im, H, W)
                    out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()))
            except OSError as e:
                raise ValueError(f"cannot read {f}: {e}") from None
        return torch.stack(out)

    stat = [(str(f.relative_to(root)), f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    digest = hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:16]
    return PictureSource(str(root), len(files), read, {"folder": str(root.resolve()), "files": len(files),
                                                        "size": [H, W], "listing_sha256": digest})


def dataset_source(dataset: QuantizedDataset, name: str, limit: int = 0) -> PictureSource:
    """A dataset's items as uint8 pictures: v in 0..L-1 -> round(v 255 / (L-1)), the [-1, 1] mapping's rounding."""
    if dataset.is_video:
        raise ValueError(f"{name} holds videos: FID / KID here compare pictures")
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    L = dataset.levels

    def read(start: int, stop: int) -> torch.Tensor:
        v = dataset.get_batch(torch.arange(start, stop)).values
        return v if L == 256 else (v.double() * (255 / (L - 1))).round().to(torch.uint8)

    return PictureSource(name, n, read, {"dataset": name, "items": n, "levels": L})


def extract_features(extractor, source: PictureSource, cache: str | Path | None = None, *, batch_size: int = 50,
                     chunk: int = 1000, progress: bool = True) -> torch.Tensor:
    """(N, D) float64 features of every picture of `source`. With `cache`, chunks of `chunk` pictures are kept in
    `cache/<source key>/` and reused (a run stopped midway continues after the last whole chunk)."""
    from safetensors.torch import load_file, save_file

    key = source.key(getattr(extractor, "source", type(extractor).__name__))
    folder = Path(cache) / key if cache is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.json").write_text(json.dumps({"name": source.name, **source.info}, indent=2))
    parts = []
    bar = tqdm(total=source.count, unit="img", desc=f"features {Path(source.name).name}", dynamic_ncols=True,
               disable=not progress)
    for c0 in range(0, source.count, chunk):
        c1 = min(c0 + chunk, source.count)
        f = folder / f"features_{c0:08d}.safetensors" if folder is not None else None
        if f is not None and f.exists():
            parts.append(load_file(str(f))["features"])
        else:
            feats = torch.cat([extractor(source.read(b, min(b + batch_size, c1))) for b in range(c0, c1, batch_size)])
            if f is not None:
                tmp = f.with_suffix(".tmp")
                save_file({"features": feats.contiguous()}, str(tmp))
                tmp.replace(f)
            parts.append(feats)
        bar.update(c1 - c0)
    bar.close()
    return torch.cat(parts).double()


class PrecomputedFeatures(torch.nn.Module):
    """The 'feature network' handed to torchmetrics when the features are already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


def _check(real: torch.Tensor, fake: torch.Tensor, need: int) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.size(1) != fake.size(1):
        raise ValueError(f"feature sets must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) < need:
        raise ValueError(f"need at least {need} pictures in each set, got {len(real)} and {len(fake)}")


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (float64 throughout)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check(real, fake, 2)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.size(1)), reset_real_features=False)
    metric.set_dtype(torch.float64)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float, int]:
    """KID (mean, std over `subsets` random subsets) and the subset size used (at most the smaller set's size).
    The subsets are drawn from a generator seeded with `seed`, so the figure reproduces."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    _check(real, fake, 2)
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.size(1)), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size
