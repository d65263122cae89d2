"""LPIPS (VGG16) perceptual distance from local weight files, without torchvision.

Needs two files, which we never download: the torchvision ImageNet VGG16 weights (`vgg16-*.pth`,
keys `features.N.weight`) and LPIPS v0.1's linear heads for VGG (`vgg.pth`, keys
`linK.model.1.weight`, from the `lpips` package). Put both in one folder and pass it with
`--perceptual-weights DIR`, or set STARFLOW_PERCEPTUAL_DIR, or use ~/.cache/starflow/lpips.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LPIPS", "find_perceptual_weights", "VGG_CHANNELS", "PERCEPTUAL_HELP"]

VGG_CHANNELS = (64, 128, 256, 512, 512)
# VGG16 `features` layout: convs per stage; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
PERCEPTUAL_HELP = ("a folder with torchvision's VGG16 ImageNet weights (vgg16-397923af.pth) and LPIPS v0.1's "
                   "VGG linear layers (vgg.pth from the lpips package)")
_DEFAULT_DIR = Path.home() / ".cache" / "starflow" / "lpips"


def _weight_files(folder: Path) -> tuple[Path, Path] | None:
    vgg = sorted(list(folder.glob("vgg16*.pth")) + list(folder.glob("vgg16*.safetensors")))
    lin = folder / "vgg.pth"
    return (vgg[0], lin) if vgg and lin.exists() else None


def find_perceptual_weights(folder: str | Path | None = None) -> Path | None:
    """The folder to use: `folder` (must hold the files), else $STARFLOW_PERCEPTUAL_DIR, else the cache dir."""
    if folder is not None:
        folder = Path(folder).expanduser()
        if _weight_files(folder) is None:
            raise FileNotFoundError(f"perceptual loss weights: {folder} must hold {PERCEPTUAL_HELP}")
        return folder
    for cand in (os.environ.get("STARFLOW_PERCEPTUAL_DIR"), _DEFAULT_DIR):
        if cand and Path(cand).is_dir() and _weight_files(Path(cand)) is not None:
            return Path(cand)
    return None


def _load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """d(x, y) per sample, inputs in [-1, 1] (N, C, H, W); 1-channel inputs are repeated to RGB."""

    def __init__(self, min_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        self.taps: list[int] = []  # index in `features` after which a stage's last ReLU output is read
        for i, (cin, cout, n) in enumerate(_STAGES):
            if i > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for j in range(n):
                layers += [nn.Conv2d(cin if j == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=False)]
            self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)  # same indices as torchvision's vgg16().features[:30]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in VGG_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.min_size = min_size  # VGG's 4 poolings need >= 16 px; tiny images are upsampled
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_dir(cls, folder: str | Path) -> "LPIPS":
        found = _weight_files(Path(folder))
        if found is None:
            raise FileNotFoundError(f"perceptual loss weights: {folder} must hold {PERCEPTUAL_HELP}")
        vgg_file, lin_file = found
        model = cls()
        vgg = {k[len("features."):]: v for k, v in _load(vgg_file).items() if k.startswith("features.")}
        vgg = {k: v for k, v in vgg.items() if int(k.split(".")[0]) < len(model.features)}
        model.features.load_state_dict(vgg, strict=True)
        lin = _load(lin_file)
        model.lins.load_state_dict({f"{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(len(VGG_CHANNELS))},
                                   strict=True)
        return model

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))  # unit-normalise channels
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4:
            raise ValueError(f"LPIPS needs two (N, C, H, W) batches of one shape, got {tuple(x.shape)}, "
                             f"{tuple(y.shape)}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"LPIPS takes 1- or 3-channel images, got {x.shape[1]} channels")
        if min(x.shape[-2:]) < self.min_size:
            s = self.min_size / min(x.shape[-2:])
            x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            y = F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False)
        d = 0.0
        for fx, fy, lin in zip(self._feats(x), self._feats(y), self.lins):
            d = d + lin((fx - fy).pow(2)).mean(dim=(2, 3))  # (N, 1)
        return d.view(-1)  # (N,)
