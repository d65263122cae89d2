"""Weights files read tensor by tensor: a model is loaded without ever holding two copies of it.

A released checkpoint is as large as the model (3B text-to-image: 7.7 GB in bf16), so reading the whole
state dict and then copying it into a model needs twice the memory, more when the file's dtype is wider
than the model's. Here:
- the model is built on the `meta` device (no memory, no random initialisation) and materialised with
  uninitialised storage of the chosen dtype on the chosen device (`empty_model`);
- the file is opened lazily (`WeightsFile`): safetensors through `safe_open`, `.pth` / `.pt` through
  `torch.load(mmap=True)`; keys and shapes are checked against the model before any data is read;
- tensors are then read a chunk at a time, checked (finite, not `meta`), cast and copied into their
  parameter (`load_weights`). The file is re-opened for each chunk of at most `CHUNK_BYTES`, because the pages
  of a memory-mapped file that were read count in the process's memory until the mapping is closed: this
  bounds them to one chunk. Peak host memory is the model plus about one chunk (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

__all__ = ["CheckpointError", "WeightsFile", "open_weights", "load_weights", "empty_model", "CHUNK_BYTES",
           "DEPRECATED_SUFFIXES", "DEPRECATED_KEYS", "normalize_key"]

# file data resident at once while loading (besides the model itself)
CHUNK_BYTES = 128 * 2 ** 20

# Buffers the official model registers but never uses; present in its checkpoints.
DEPRECATED_SUFFIXES = ("attn_mask", "freqs_cos", "freqs_sin")
DEPRECATED_KEYS = ("var",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model: names the file or the offending keys."""


def read_failure(path: Path, e: Exception) -> str:
    """What is wrong with a weights file that did not load, in words (torch's own message can be empty or
    '[Errno 22] Invalid argument' for a truncated file)."""
    if path.is_dir():
        return "it is a folder, not a weights file"
    size = path.stat().st_size if path.exists() else 0
    msg = " ".join(str(e).split())
    if size == 0:
        return "the file is empty (0 bytes): an interrupted download or copy"
    if "weights_only" in msg or "Unsupported global" in msg or type(e).__name__ == "UnpicklingError":
        return (f"it holds Python objects other than tensors, which are not loaded (a pickle can run code): "
                f"{msg[:300]}")
    return (f"not a complete {'safetensors' if path.suffix == '.safetensors' else 'PyTorch'} weights file "
            f"({size} bytes; truncated or corrupt?): {msg[:300] or type(e).__name__}")


def normalize_key(key: str) -> str:
    """DDP / torch.compile prefixes removed: the same parameter name however the model was wrapped."""
    return key.removeprefix("module.").removeprefix("_orig_mod.")


def is_deprecated(key: str) -> bool:
    return key in DEPRECATED_KEYS or key.rsplit(".", 1)[-1] in DEPRECATED_SUFFIXES


def _state_dict_entry(obj: Any) -> Any:
    """A training checkpoint's 'state_dict' or 'model' entry; the object itself otherwise."""
    if isinstance(obj, dict):
        for name in ("state_dict", "model"):
            if isinstance(obj.get(name), dict):
                return obj[name]
    return obj


class WeightsFile:
    """A state dict read lazily from a file or held in memory: names, shapes, then tensors in chunks.

    `shapes` (normalised names -> shape) needs no tensor data. `read(names)` yields (name, tensor) with the
    file open only for the chunk; the tensors are CPU tensors that may alias the file's mapping (copy them)."""

    def __init__(self, source: str | Path | Mapping[str, Any], where: str | None = None):
        self.where = where or (str(source) if isinstance(source, (str, Path)) else "checkpoint")
        self._mapping: dict[str, Any] | None = None
        self._path: Path | None = None
        self._raw: dict[str, str] = {}                 # normalised name -> name in the file
        if isinstance(source, (str, Path)):
            self._path = Path(source)
            if not self._path.exists():
                raise FileNotFoundError(f"checkpoint not found: {self._path}")
            self._safetensors = self._path.suffix == ".safetensors"
            with self._open() as entries:
                self.shapes = self._index(entries)
        else:
            if not isinstance(source, Mapping):
                raise CheckpointError(f"{self.where}: expected a state dict (a mapping of names to tensors), "
                                      f"got {type(source).__name__}")
            self._mapping = dict(_state_dict_entry(dict(source)))
            self.shapes = self._index(self._mapping)

    # ---- opening -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        """The file's entries (an object with keys() and a getter), open for the duration of the block."""
        if self._mapping is not None:
            yield self._mapping
            return
        path = self._path
        if self._safetensors:
            from safetensors import safe_open
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # truncated download, not a safetensors file...
                raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(path, e)}") from e
            with handle as f:
                yield _SafetensorsEntries(f, path)
            return
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(path, e)}") from e
            data = self._load_whole(path)             # a legacy (non-zip) .pth cannot be mapped
        except Exception as e:  # corrupt file, pickle with code, truncated download...
            raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(path, e)}") from e
        entries = _state_dict_entry(data)
        if not isinstance(entries, dict):
            raise CheckpointError(f"{path} does not hold a state dict")
        try:
            yield entries
        finally:
            del entries, data                         # the last references: the mapping closes here

    def _load_whole(self, path: Path) -> Any:
        # an old-format file is read whole, once, and kept: it cannot be re-opened cheaply per chunk
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(path, e)}") from e
        self._mapping = _state_dict_entry(data)
        if not isinstance(self._mapping, dict):
            raise CheckpointError(f"{path} does not hold a state dict")
        return data

    def _index(self, entries) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        self._nbytes: dict[str, int] = {}
        for raw in entries.keys():
            name = normalize_key(str(raw))
            shape, nbytes = _describe(entries, raw, self.where)
            self._raw[name] = raw
            shapes[name] = shape
            self._nbytes[name] = nbytes
        return shapes

    # ---- reading -----------------------------------------------------------------------------------
    def read(self, names: list[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for `names`, in order, re-opening the file every `chunk_bytes` of data."""
        i = 0
        while i < len(names):
            size, j = 0, i
            while j < len(names) and (j == i or size + self._nbytes[names[j]] <= chunk_bytes):
                size += self._nbytes[names[j]]
                j += 1
            with self._open() as entries:
                for name in names[i:j]:
                    yield name, _tensor(entries, self._raw[name], name, self.where)
            del entries                               # the mapping closes with its last reference
            i = j


class _SafetensorsEntries:
    """`safe_open` as a mapping-like object (keys(), [name], shape without reading)."""

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path

    def keys(self):
        return self.handle.keys()

    def shape(self, name: str) -> tuple[tuple[int, ...], int]:
        sl = self.handle.get_slice(name)
        shape = tuple(int(v) for v in sl.get_shape())
        width = _SAFETENSORS_BYTES.get(sl.get_dtype(), 4)
        n = 1
        for v in shape:
            n *= v
        return shape, n * width

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)


_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _describe(entries, raw: str, where: str) -> tuple[tuple[int, ...], int]:
    if isinstance(entries, _SafetensorsEntries):
        try:
            return entries.shape(raw)
        except Exception as e:
            raise CheckpointError(f"{where}: cannot read the entry {raw}: {e}") from e
    v = entries[raw]
    if not torch.is_tensor(v):
        raise CheckpointError(f"{where}: checkpoint entry {raw} is not a tensor ({type(v).__name__})")
    return tuple(v.shape), v.numel() * v.element_size()


def _tensor(entries, raw: str, name: str, where: str) -> torch.Tensor:
    try:
        v = entries[raw]
    except Exception as e:
        raise CheckpointError(f"{where}: cannot read the tensor {name}: {e}") from e
    if not torch.is_tensor(v):
        raise CheckpointError(f"{where}: checkpoint entry {name} is not a tensor ({type(v).__name__})")
    if v.is_meta:
        raise CheckpointError(f"{where}: checkpoint entry {name} is on the meta device: the file holds shapes "
                              f"but no values (it was saved from a model that was never materialised)")
    return v


# ---- models ------------------------------------------------------------------------------------------
def empty_model(factory: Callable[[], torch.nn.Module], *, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None) -> torch.nn.Module:
    """`factory()` built on the meta device, then given uninitialised storage of `dtype` on `device`: every
    parameter must then be loaded (load_weights checks that none is missing). Modules whose buffers are
    computed constants recompute them when moved (nn.rope)."""
    with torch.device("meta"):
        model = factory()
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to_empty(device=device if device is not None else "cpu")


def check_fits(model: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]], where: str) -> list[str]:
    """The parameter names to load, or CheckpointError naming every missing, unexpected or misshapen key."""
    shapes = {k: v for k, v in shapes.items() if not is_deprecated(k)}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    mismatched = [f"{k}: checkpoint {shapes[k]} vs model {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:10]))
    if problems:
        prefix = "" if where == "checkpoint" else f"{where}: "
        raise CheckpointError(f"{prefix}checkpoint does not match the model config: " + " | ".join(problems))
    return list(own)


def load_weights(model: torch.nn.Module, source: WeightsFile | str | Path | Mapping[str, Any],
                 chunk_bytes: int = CHUNK_BYTES) -> torch.nn.Module:
    """Copy a state dict (file or mapping) into `model`, strictly: only the official deprecated buffers are
    dropped; any missing, unexpected or misshapen key, non-tensor, `meta` or non-finite entry is a
    CheckpointError. Each tensor is cast to its parameter's dtype and device as it is copied."""
    weights = source if isinstance(source, WeightsFile) else WeightsFile(source)
    names = check_fits(model, weights.shapes, weights.where)
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in weights.read(names, chunk_bytes):
            if not _all_finite(value):
                raise CheckpointError(f"{weights.where}: checkpoint entry {name} contains NaN or infinite values")
            try:
                targets[name].copy_(value)
            except RuntimeError as e:   # e.g. a dtype that does not convert
                raise CheckpointError(f"{weights.where}: cannot load the tensor {name}: {e}") from e
            del value                                 # it may hold the file's mapping open
    return model


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in t. min / max propagate NaN and show an infinity, and run ~50x faster than
    `isfinite(t).all()` on bf16 tensors (a 7.7 GB checkpoint: seconds instead of minutes)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    try:
        lo, hi = torch.aminmax(t)
    except RuntimeError:          # a dtype without aminmax (float8)
        return bool(torch.isfinite(t.float()).all())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def open_weights(source: str | Path | Mapping[str, Any], where: str | None = None) -> WeightsFile:
    return WeightsFile(source, where)
