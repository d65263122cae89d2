"""The Inception-v3 feature network of FID / KID, from a local file (never downloaded at run time).

The network is the TorchScript port of the TensorFlow FID Inception (`inception-2015-12-05.pt`, published with
StyleGAN2-ADA and used by StyleGAN3, EDM and clean-fid): 2048-dim pool features of RGB pictures in [0, 255],
resized inside the network to 299x299. Any TorchScript module with the same call, `net(images, return_features=True)
-> (N, D)`, loads through the same code (the tests use a tiny random one).

Where the file is looked for, first found wins: the path given (a file, or a folder holding the file),
$STARFLOW_INCEPTION, $XDG_CACHE_HOME/starflow (default ~/.cache/starflow), $TORCH_HOME/hub/checkpoints
(default ~/.cache/torch/hub/checkpoints).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

__all__ = ["INCEPTION_FILE", "INCEPTION_URL", "InceptionFeatures", "find_inception", "load_inception",
           "inception_search_paths"]

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def inception_search_paths() -> list[Path]:
    """The places looked at when no path is given, in order."""
    out = []
    env = os.environ.get("STARFLOW_INCEPTION")
    if env:
        out.append(Path(env))
    out.append(_cache_home() / "starflow" / INCEPTION_FILE)
    torch_home = Path(os.environ.get("TORCH_HOME") or _cache_home() / "torch")
    out.append(torch_home / "hub" / "checkpoints" / INCEPTION_FILE)
    return out


def find_inception(path: str | Path | None = None) -> Path:
    """The Inception file to use, or a FileNotFoundError saying what to download and where to put it."""
    candidates = [Path(path)] if path is not None else inception_search_paths()
    tried = []
    for c in candidates:
        f = c / INCEPTION_FILE if c.is_dir() else c
        if f.is_file():
            return f
        tried.append(str(f))
    raise FileNotFoundError(
        f"Inception weights for FID/KID not found (looked for {', '.join(tried)}). Download {INCEPTION_FILE} "
        f"(the TorchScript TensorFlow-FID Inception-v3) from {INCEPTION_URL} and pass --inception PATH, set "
        f"STARFLOW_INCEPTION=PATH, or put it in {_cache_home() / 'starflow'}/")


class InceptionFeatures(torch.nn.Module):
    """uint8 RGB (or grey) pictures (N, C, H, W) -> float64 features (N, D), through a TorchScript network."""

    def __init__(self, net: torch.nn.Module, source: str = ""):
        super().__init__()
        self.net = net
        self.source = source

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.size(1) not in (1, 3):
            raise ValueError(f"expected pictures (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 pictures in [0, 255], got {images.dtype}")
        x = images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images
        device = next(iter(self.net.parameters()), torch.empty(0)).device
        # the network takes floats in [0, 255] and resizes (bilinear) to its own input size
        feats = self.net(x.to(device, torch.float32), return_features=True)
        return feats.reshape(x.size(0), -1).double().cpu()


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    f = find_inception(path)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in recent torch, but the reference network exists only in that form
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(f), map_location=device)
    except RuntimeError as e:
        raise ValueError(f"{f} is not a TorchScript file ({str(e).splitlines()[0]}): FID needs {INCEPTION_FILE} "
                         f"from {INCEPTION_URL}") from None
    return InceptionFeatures(net.eval(), str(f))
