"""A small KL autoencoder trained on bundled data (sklearn digits), so the latent pipeline runs offline.

Two layouts:
- "conv" (default): conv encoder with len(hidden_channels) - 1 stride-2 downsamples -> a diagonal Gaussian
  (mean, log-variance) per latent channel; a mirrored decoder;
- "patch": each `patch` x `patch` block of pixels is encoded on its own (a stride-`patch` convolution, then
  1x1 convolutions of widths `hidden_channels`), so the encoder is exactly equivariant to shifts by whole
  patches: a picture moved by `patch` pixels has its latents moved by one token. The decoder sees 3x3
  neighbourhoods of latents before a transposed convolution back to pixels. All of its work runs at the
  latent resolution, so it trains in seconds on a CPU.
Latents are normalised like SD-VAE's:
z = (sample - shift_factor) * scaling_factor, with both factors measured on the training data after
training so that latents have zero mean and unit variance.
Saved as `config.json` + `model.safetensors` in a folder, loaded with the spec "kl:<dir>".
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..strict import check_types, from_mapping
from .base import Autoencoder, randn_like

__all__ = ["SmallKLConfig", "SmallKLAutoencoder", "CONFIG_TYPE"]

CONFIG_TYPE = "starflow-small-kl"


@dataclass
class SmallKLConfig:
    in_channels: int = 1
    latent_channels: int = 4
    hidden_channels: list[int] = field(default_factory=lambda: [32, 64])  # conv: one 2x downsample per step
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    layout: str = "conv"             # "conv" or "patch" (see the module docstring)
    patch: int = 4                   # layout "patch": pixels per latent token along each side

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "small-KL autoencoder config") -> "SmallKLConfig":
        return from_mapping(cls, {k: v for k, v in d.items() if k != "type"}, where)

    def __post_init__(self):
        check_types(self)
        if self.in_channels < 1 or self.latent_channels < 1:
            raise ValueError(f"in_channels and latent_channels must be >= 1, got {self.in_channels}, "
                             f"{self.latent_channels}")
        if not self.hidden_channels or any(int(c) < 1 for c in self.hidden_channels):
            raise ValueError(f"hidden_channels must be a non-empty list of positive ints, got {self.hidden_channels}")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")
        if self.layout not in ("conv", "patch"):
            raise ValueError(f"layout must be 'conv' or 'patch', not {self.layout!r}")
        if self.layout == "patch" and self.patch < 1:
            raise ValueError(f"patch must be >= 1, got {self.patch}")

    @property
    def spatial_factor(self) -> int:
        return self.patch if self.layout == "patch" else 2 ** (len(self.hidden_channels) - 1)


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class SmallKLAutoencoder(Autoencoder):
    def __init__(self, config: SmallKLConfig | None = None):
        super().__init__()
        self.config = cfg = config or SmallKLConfig()
        hid = [int(c) for c in cfg.hidden_channels]
        self.in_channels, self.latent_channels = cfg.in_channels, cfg.latent_channels
        self.spatial_factor, self.temporal_factor = cfg.spatial_factor, 1
        if cfg.layout == "patch":
            self._build_patch(cfg, hid)
            return

        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, hid[0], 3, padding=1), _ResBlock(hid[0])]
        for a, b in zip(hid[:-1], hid[1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), _ResBlock(b)]  # H -> H / 2
        enc += [nn.GroupNorm(_groups(hid[-1]), hid[-1]), nn.SiLU(), nn.Conv2d(hid[-1], 2 * cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, hid[-1], 3, padding=1), _ResBlock(hid[-1])]
        for a, b in zip(hid[::-1][:-1], hid[::-1][1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), _ResBlock(b)]  # H -> 2 H
        dec += [nn.GroupNorm(_groups(hid[0]), hid[0]), nn.SiLU(), nn.Conv2d(hid[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _build_patch(self, cfg: SmallKLConfig, hid: list[int]) -> None:
        p, c = cfg.patch, cfg.latent_channels
        # encoder: one token per patch, computed from that patch alone (1x1 convolutions after the patchify)
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, hid[0], p, stride=p)]
        for a, b in zip(hid[:-1], hid[1:]):
            enc += [nn.SiLU(), nn.Conv2d(a, b, 1)]
        enc += [nn.SiLU(), nn.Conv2d(hid[-1], 2 * c, 1)]
        self.encoder = nn.Sequential(*enc)
        # decoder: 3x3 neighbourhoods of tokens (strokes cross patch borders), then each token back to its pixels
        rev = hid[::-1]
        dec: list[nn.Module] = [nn.Conv2d(c, rev[0], 3, padding=1)]
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.SiLU(), nn.Conv2d(a, b, 3, padding=1)]
        dec += [nn.SiLU(), nn.ConvTranspose2d(rev[-1], cfg.in_channels, p, stride=p)]
        self.decoder = nn.Sequential(*dec)

    # ---- raw (unnormalised) posterior, used by training ----------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> mean, logvar, each (N, c, H/f, W/f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    # ---- Autoencoder interface -----------------------------------------------------------------
    def _encode_images(self, x, sample, generator):
        mean, logvar = self.posterior(x.to(self.dtype))
        z = mean
        if sample:
            z = z + (0.5 * logvar).exp() * randn_like(z, generator)
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def _decode_images(self, z):
        return self.decode_raw(z.to(self.dtype) / self.config.scaling_factor + self.config.shift_factor)

    def decoder_parameters(self):
        return list(self.decoder.parameters())

    # ---- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"type": CONFIG_TYPE, **dataclasses.asdict(self.config)},
                                                     indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(path / "model.safetensors"))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SmallKLAutoencoder":
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.exists() or not weights.exists():
            raise FileNotFoundError(f"small KL autoencoder: {path} needs config.json and model.safetensors; "
                                    f"train one with `starflow train-autoencoder --out {path}` (on the digits by "
                                    f"default; `--data moving_digits` for video frames, and --latent-channels / "
                                    f"--hidden-channels as the config that uses it says)")
        raw = json.loads(cfg_file.read_text())
        if raw.get("type") != CONFIG_TYPE:
            raise ValueError(f"{cfg_file} is not a starflow small KL autoencoder (type={raw.get('type')!r}); "
                             f"for diffusers folders use sd-vae: or wan:")
        model = cls(SmallKLConfig.from_dict(raw))
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: weights do not match the config (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]})")
        return model.freeze()

    def extra_repr(self) -> str:
        c = self.config
        return (f"layout={c.layout}, in_channels={c.in_channels}, latent_channels={c.latent_channels}, "
                f"spatial_factor={c.spatial_factor}, scaling_factor={c.scaling_factor:.4g}, "
                f"shift_factor={c.shift_factor:.4g}")
