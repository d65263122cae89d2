"""Training checkpoints (atomic, keep-last-N) and the exported trained model.

A checkpoint is a folder `ckpt-00001234/`:
- `model.safetensors` : full model weights, the plain StarFlow parameter names;
- `ema.safetensors`   : EMA weights (when enabled);
- `state.pt`          : optimiser(s) (keyed by parameter name), schedule, RNG states, step, counters
                        (read with `torch.load(weights_only=True)`).
It is written into `ckpt-00001234.tmp-<pid>/` and renamed into place, and only then does the
`latest` file point at it: a kill at any moment leaves the previous checkpoint whole and findable.

The exported model (`final/`) is `config.json` (our ModelConfig.to_dict(), the conditioning spec and
the training config) + `model.safetensors`, loadable with `load_trained(dir)`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointManager", "save_trained", "load_trained", "strip_prefix", "atomic_write_text"]

_CKPT = re.compile(r"^ckpt-(\d{8})$")


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


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


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_tensors(path: Path, sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(path))


class CheckpointManager:
    def __init__(self, out_dir: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.dir = Path(out_dir)
        self.keep_last = keep_last

    def _folder(self, step: int) -> Path:
        return self.dir / f"ckpt-{step:08d}"

    def complete(self) -> list[Path]:
        """Whole checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
        if not self.dir.exists():
            return []
        out = [p for p in self.dir.iterdir() if _CKPT.match(p.name) and (p / "state.pt").exists()
               and (p / "model.safetensors").exists()]
        return sorted(out, key=lambda p: p.name)

    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        if pointer.exists():
            p = self.dir / pointer.read_text().strip()
            if p.exists() and (p / "state.pt").exists():
                return p
        done = self.complete()
        return done[-1] if done else None

    def clean_partial(self) -> None:
        """Remove the temporary folders that a killed save left behind."""
        if self.dir.exists():
            for p in self.dir.iterdir():
                if p.name.startswith("ckpt-") and (".tmp-" in p.name or p.name.endswith(".old")):
                    shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
             extra_files: dict[str, str] | None = None) -> Path:
        """weights: file stem -> state dict (saved as safetensors); state: torch-saved `state.pt`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self._folder(step)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for stem, sd in weights.items():
            _save_tensors(tmp / f"{stem}.safetensors", sd)
        torch.save(state, tmp / "state.pt")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (after a resume): move the old one aside first
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.dir)
        atomic_write_text(self.dir / "latest", final.name)
        for p in self.complete()[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    @staticmethod
    def load(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "state.pt").exists():
            raise FileNotFoundError(f"{folder} is not a training checkpoint (no state.pt)")
        weights = {p.stem: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        return weights, state


def save_trained(folder: str | Path, state_dict: dict[str, torch.Tensor], info: dict[str, Any],
                 extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Export `config.json` + `model.safetensors` (+ `<stem>.safetensors` for each extra entry, e.g. the
    input transform) into `folder`, atomically via a temporary folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_tensors(tmp / "model.safetensors", state_dict)
    for stem, sd in (extra_tensors or {}).items():
        _save_tensors(tmp / f"{stem}.safetensors", sd)
    (tmp / "config.json").write_text(json.dumps(info, indent=2, default=str))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_trained(folder: str | Path, device: str | torch.device = "cpu"):
    """(StarFlow in eval mode, TrainConfig) from a folder written by `save_trained` (or a checkpoint folder
    that has a config.json). `cfg.model` is the resolved ModelConfig dict; the conditioning spec is in
    `cfg.data` (condition, text_encoder, txt_size) and `config.json["conditioning"]`."""
    from ..config import ModelConfig
    from ..flow.loading import load_state_dict_strict, read_state_dict
    from ..flow.model import StarFlow
    from .config import TrainConfig

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder}: no config.json (expected a folder written by `starflow train`)")
    info = json.loads(cfg_path.read_text())
    if "model" not in info:
        raise ValueError(f"{cfg_path}: no 'model' entry")
    mcfg = ModelConfig.from_dict(info["model"])
    model = StarFlow(mcfg)
    load_state_dict_strict(model, read_state_dict(folder / "model.safetensors"))
    train_dict = dict(info.get("train") or {})
    train_dict["model"] = mcfg.to_dict()
    cfg = TrainConfig.from_dict(train_dict) if info.get("train") else None
    return model.to(device).eval(), cfg
