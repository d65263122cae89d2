"""Training checkpoints (atomic, keep-last-N) and the exported trained model.

A checkpoint is a folder `ckpt-00001234/`:
- `model.safetensors` : full model weights, the plain StarFlow parameter names;
- `ema.safetensors`   : EMA weights (when enabled);
- `state.pt`          : optimiser(s) (keyed by parameter name), schedule, RNG states, step, counters
                        (read with `torch.load(weights_only=True)`).
It is written into `ckpt-00001234.tmp-<pid>/` and renamed into place, and only then does the
`latest` file point at it: a kill at any moment leaves the previous checkpoint whole and findable. A save
that fails (a full disk) removes its temporary folder and raises a CheckpointWriteError (an OSError); the
previous checkpoint stays the newest. `candidates()` lists what a resume may use, newest first: when the
newest cannot be read (a truncated file), the trainer falls back to the one before and says so.

The exported model (`final/`) is a pipeline folder (pipelines.loading: `pipeline.json` + the flow as a
model folder `flow/`) with `training.json` (the run's config) beside it: `starflow generate --model final`
and `StarFlowPipeline.from_pretrained` read it; `load_trained(dir)` gives (model, TrainConfig).

`metrics.jsonl` (MetricsLog) gets one JSON row per line, appended (an append that fails part way, a full
disk, is cut back off). A resume cuts the log back to the rows that were there when its checkpoint was saved
(`metrics_rows` in state.pt; older checkpoints: the rows up to its step) with an atomic rewrite, so that
work redone after the checkpoint is logged once; a torn last line (a kill, a full disk) is dropped with a
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

from ..flow.io import CheckpointError, _fsync_dir, atomic_write_text, write_weights
from ..pipelines.loading import TRAINING_FILE

__all__ = ["CheckpointManager", "CheckpointWriteError", "MetricsLog", "load_trained", "read_train_config",
           "strip_prefix"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota); the previous one is untouched."""

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

    def candidates(self) -> list[Path]:
        """Checkpoints a resume may start from, newest first: the one `latest` names, then the whole ones
        before it (a fallback when the newest cannot be read)."""
        first = self.latest()
        if first is None:
            return []
        return [first] + [p for p in reversed(self.complete()) if p.name < first.name]

    def clean_partial(self) -> None:
        """Remove the temporary folders that a killed save left behind."""
        if self.dir.exists():
            for p in self.dir.iterdir():
                if p.name.startswith("ckpt-") and (".tmp-" in p.name or p.name.endswith(".old")):
                    shutil.rmtree(p, ignore_errors=True)
                elif p.name.startswith(".latest.tmp-"):      # a killed atomic_write_text of the pointer
                    p.unlink(missing_ok=True)

    def save(self, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
             extra_files: dict[str, str] | None = None) -> Path:
        """weights: file stem -> state dict (saved as safetensors); state: torch-saved `state.pt`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self._folder(step)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            for stem, sd in weights.items():
                write_weights(tmp / f"{stem}.safetensors", sd)
            torch.save(state, tmp / "state.pt")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        except Exception as e:   # the writers raise their own types (torch: RuntimeError) for a full disk
            shutil.rmtree(tmp, ignore_errors=True)
            prev = self.latest()
            raise CheckpointWriteError(
                getattr(e, "errno", None) or 0,
                f"could not write checkpoint {final.name} in {self.dir} ({' '.join(str(e).split())[:300]}); "
                f"{'the newest checkpoint is still ' + prev.name if prev else 'no checkpoint was saved'} "
                f"(is the disk full?)") from e
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
        """(file stem -> tensors, state). A file that cannot be read is a CheckpointError naming it."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "state.pt").exists():
            raise FileNotFoundError(f"{folder} is not a training checkpoint (no state.pt)")
        weights = {}
        for p in sorted(folder.glob("*.safetensors")):
            try:
                weights[p.stem] = load_file(str(p))
            except Exception as e:  # truncated or overwritten: safetensors raises its own error types
                raise CheckpointError(f"{p} cannot be read ({' '.join(str(e).split())[:200]})") from e
        try:
            state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{folder / 'state.pt'} cannot be read ({' '.join(str(e).split())[:200]})") from e
        if not isinstance(state, dict) or "step" not in state:
            raise CheckpointError(f"{folder / 'state.pt'} is not a training state (no step)")
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

    def resume(self, step: int, saved_rows: int | None = None) -> None:
        """Continue a run from its checkpoint at `step`: keep the rows that were logged when it was saved
        (`saved_rows`; unknown: the rows up to its step), since later ones will be logged again, dropping a
        torn last line with a warning, and rewrite the file atomically."""
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
        if saved_rows is not None and len(rows) >= saved_rows:
            rows = rows[:saved_rows]
        self.rows = [r for r in rows if r.get("step", 0) <= step]
        if self.write:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.write:
            data = memoryview((json.dumps(row) + "\n").encode())
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    while data:                 # a full disk may take part of the row, then refuse the rest
                        data = data[os.write(fd, data):]
                except OSError as e:
                    try:
                        os.ftruncate(fd, start)     # no half row left behind (shrinking needs no space)
                    except OSError:
                        pass                        # a resume drops a torn last line anyway
                    raise OSError(e.errno, e.strerror, str(self.path)) from e
            finally:
                os.close(fd)


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
