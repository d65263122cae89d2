"""Training checkpoints (atomic, keep-last-N) and the exported trained model.

A checkpoint is a folder `ckpt-00001234/`:
- `model.safetensors` : full model weights, the plain StarFlow parameter names;
- `ema.safetensors`   : EMA weights (when enabled);
- `state.pt`          : optimiser(s) (keyed by parameter name), schedule, RNG states, step, counters
                        (read with `torch.load(weights_only=True)`).
It is written into `ckpt-00001234.tmp-<pid>/` and renamed into place, and only then does the
`latest` file point at it: a kill at any moment leaves the previous checkpoint whole and findable.

The exported model (`final/`) is a pipeline folder (pipelines.loading: `pipeline.json` + the flow as a
model folder `flow/`) with `training.json` (the run's config) beside it: `starflow generate --model final`
and `StarFlowPipeline.from_pretrained` read it; `load_trained(dir)` gives (model, TrainConfig).

`metrics.jsonl` (MetricsLog) gets one JSON row per line, appended; a resume cuts it back to the
checkpoint's step with an atomic rewrite, and a torn last line (a full disk, a kill) is dropped with a
warning instead of failing the resume.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..flow.io import _fsync_dir, atomic_write_text, write_weights
from ..pipelines.loading import TRAINING_FILE

__all__ = ["CheckpointManager", "MetricsLog", "load_trained", "read_train_config", "strip_prefix"]

_CKPT = re.compile(r"^ckpt-(\d{8})$")


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


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
            write_weights(tmp / f"{stem}.safetensors", sd)
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


class MetricsLog:
    """A run's metrics: rows in memory and in `metrics.jsonl` (one JSON object per line, appended)."""

    def __init__(self, path: Path, write: bool):
        self.path, self.write = Path(path), write       # only the main process writes
        self.rows: list[dict] = []

    def start(self) -> None:
        """A fresh run: an empty log."""
        self.rows = []
        if self.write:
            atomic_write_text(self.path, "")

    def resume(self, step: int) -> None:
        """Continue a run from its checkpoint at `step`: keep the rows up to it (later ones will be logged
        again), dropping a torn last line with a warning, and rewrite the file atomically."""
        rows: list[dict] = []
        if self.path.exists():
            lines = self.path.read_text(errors="replace").splitlines()
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    if n == len(lines) - 1:   # a row cut short by a kill or a full disk
                        warnings.warn(f"{self.path}: the last line was written only in part and is dropped "
                                      f"({line[:60]!r})", RuntimeWarning, stacklevel=2)
                        continue
                    raise ValueError(f"{self.path}: line {n + 1} is not a JSON row; fix or remove it") from None
        self.rows = [r for r in rows if r.get("step", 0) <= step]
        if self.write:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.write:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def read_train_config(folder: str | Path):
    """The TrainConfig of a run's exported folder (final/), from its training.json (or a starflow 0.1
    export's config.json); None when the folder does not say how it was trained."""
    from .config import TrainConfig

    folder = Path(folder)
    for name in (TRAINING_FILE, "config.json"):
        if (folder / name).exists():
            info = json.loads((folder / name).read_text())
            train = dict(info.get("train") or {}) if isinstance(info, dict) else {}
            return TrainConfig.from_saved(train) if train else None
    return None


def load_trained(folder: str | Path, device: str | torch.device = "cpu"):
    """(StarFlow in eval mode, TrainConfig or None) from a run's exported folder (final/): a pipeline folder
    with training.json beside it, or a starflow 0.1 export (config.json + model.safetensors)."""
    from ..flow.io import load_model, load_state_dict_strict, read_model_config, read_state_dict
    from ..flow.model import StarFlow

    folder = Path(folder)
    if (folder / "flow").is_dir():
        model = load_model(folder / "flow", device=device)
    elif (folder / "config.json").exists():
        model = StarFlow(read_model_config(folder))
        load_state_dict_strict(model, read_state_dict(folder / "model.safetensors"))
        model = model.to(device).eval()
    else:
        raise FileNotFoundError(f"{folder}: not a trained model folder (expected the final/ folder written by "
                                f"`starflow train`)")
    tcfg = read_train_config(folder)
    # the run's model section may name a size or an official file: give the config the model was built with
    return model, None if tcfg is None else dataclasses.replace(tcfg, model=model.config.to_dict())
