"""Image and video folders with captions.

Captions, first source found wins:
1. `captions.csv` (header with a file column: file/path/image/video/filename, and a caption column:
   caption/text/prompt) or `captions.jsonl` (one {"file": ..., "caption": ...} object per line) in the
   root folder; file names are relative to the root;
2. a sidecar text file next to the item (`cat.png` -> `cat.txt`);
3. the name of the item's folder below the root (`root/golden_retriever/x.jpg` -> "golden retriever");
   those folder names are also the class labels.
Items are resized to cover the target size and centre-cropped; with aspect-ratio buckets each item
goes to the bucket nearest its own aspect ratio. Pixels are 8-bit: 16-bit pictures are scaled down
(data.media.eight_bit), never clipped.

A file that cannot be read is an error naming it; with `skip_unreadable=True` every file is decoded once
when the folder is scanned, and the unreadable ones are left out with a warning that counts them.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .base import QuantizedDataset
from .buckets import aspect_ratio_to_image_size, nearest_bucket, parse_ratio
from .media import eight_bit

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "ImageFolderDataset", "VideoFolderDataset", "read_captions"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")
_FILE_KEYS = ("file", "path", "image", "video", "filename", "file_name")
_CAPTION_KEYS = ("caption", "text", "prompt")


def _pick(keys, wanted, where: Path) -> str:
    for k in keys:
        if k.strip().lower() in wanted:
            return k
    raise ValueError(f"{where}: needs a column named one of {wanted}; found {list(keys)}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def read_captions(root: Path) -> dict[str, str] | None:
    """Root-level caption table (relative file name -> caption), or None when there is none."""
    table: dict[str, str] = {}
    csv_path, jsonl_path = root / "captions.csv", root / "captions.jsonl"
    if csv_path.exists():
        with io.StringIO(_read_text(csv_path), newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ValueError(f"{csv_path} has no header row")
            fk, ck = _pick(reader.fieldnames, _FILE_KEYS, csv_path), _pick(reader.fieldnames, _CAPTION_KEYS, csv_path)
            for row in reader:
                table[row[fk].strip()] = row[ck].strip()
        return table
    if jsonl_path.exists():
        for n, line in enumerate(_read_text(jsonl_path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{jsonl_path}:{n}: not JSON ({e})") from None
            table[str(obj[_pick(obj.keys(), _FILE_KEYS, jsonl_path)])] = str(obj[_pick(obj.keys(), _CAPTION_KEYS,
                                                                                        jsonl_path)])
        return table
    return None


def _resize_crop(img, height: int, width: int):
    """PIL image -> (height, width): scale to cover, then centre crop."""
    from PIL import Image

    w, h = img.size
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC if s > 1 else Image.LANCZOS)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


class _FolderDataset(QuantizedDataset):
    suffixes: tuple[str, ...] = ()
    kind = "item"

    def __init__(self, root: str | Path, image_size: int, channels: int = 3, aspect_ratios: list | None = None,
                 multiple: int = 8, require_captions: bool = True, cache: bool | None = None,
                 skip_unreadable: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.kind} folder not found: {self.root}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.channels = channels
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.suffixes and p.is_file())
        if not self.files:
            raise ValueError(f"no {self.kind} files ({', '.join(self.suffixes)}) under {self.root}")
        self.skipped: list[tuple[Path, str]] = []      # (file, why) left out by skip_unreadable
        if skip_unreadable:
            self._skip_unreadable()
        rel = [p.relative_to(self.root) for p in self.files]
        folders = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
        self.class_names = [f.replace("_", " ").replace("-", " ") for f in folders]
        self.labels = torch.tensor([folders.index(r.parts[0]) if len(r.parts) > 1 else -1 for r in rel])
        table = read_captions(self.root)
        self.captions = []
        for p, r in zip(self.files, rel):
            side = p.with_suffix(".txt")
            if table is not None and r.as_posix() in table:
                cap = table[r.as_posix()]
            elif side.exists():
                cap = _read_text(side).strip()
            elif len(r.parts) > 1:
                cap = self.class_names[folders.index(r.parts[0])]
            elif require_captions:
                raise ValueError(f"no caption for {p}: add {side.name}, a captions.csv/.jsonl row, or put it in a "
                                 f"class folder")
            else:
                cap = ""
            self.captions.append(cap)
        self.levels = 256
        self.ratios = [parse_ratio(r) for r in aspect_ratios] if aspect_ratios else None
        self.sizes = ([aspect_ratio_to_image_size(image_size, r, multiple) for r in self.ratios] if self.ratios
                      else [aspect_ratio_to_image_size(image_size, None, multiple)])
        if not self.ratios and image_size % multiple:
            raise ValueError(f"image_size {image_size} is not a multiple of {multiple} (autoencoder factor x patch)")
        self._buckets = [nearest_bucket(*self._header_hw(p), self.ratios) for p in self.files] if self.ratios else None
        self.cache = len(self.files) <= 4096 if cache is None else cache
        self._cache: dict[int, torch.Tensor] = {}

    def _skip_unreadable(self) -> None:
        keep = []
        for p in self.files:
            try:
                self._probe(p)
                keep.append(p)
            except Exception as e:  # any decoder failure: the file is what is wrong, and it is named
                self.skipped.append((p, " ".join(str(e).split()) or type(e).__name__))
        if self.skipped:
            first, why = self.skipped[0]
            warnings.warn(f"skipped {len(self.skipped)} unreadable {self.kind} file(s) of {len(self.files)} under "
                          f"{self.root} (first: {first.name}: {why})", stacklevel=3)
        if not keep:
            raise ValueError(f"none of the {len(self.files)} {self.kind} files under {self.root} can be read "
                             f"(first: {self.skipped[0][0].name}: {self.skipped[0][1]})")
        self.files = keep

    def _header_hw(self, path: Path) -> tuple[int, int]:
        try:
            return self._native_hw(path)
        except Exception as e:  # not a picture / video, truncated: name the file
            raise ValueError(f"cannot read {path}: {' '.join(str(e).split()) or type(e).__name__} "
                             f"(data.skip_unreadable=true leaves unreadable files out)") from e

    def _native_hw(self, path: Path) -> tuple[int, int]:
        raise NotImplementedError

    def _probe(self, path: Path) -> None:
        """Decode `path` enough to know it is readable (raise otherwise)."""
        raise NotImplementedError

    def _read(self, index: int, height: int, width: int) -> torch.Tensor:
        raise NotImplementedError

    def bucket_ids(self) -> list[int] | None:
        return self._buckets

    def target_size(self, index: int) -> tuple[int, int]:
        return self.sizes[self._buckets[index]] if self._buckets else self.sizes[0]

    def load(self, index: int) -> torch.Tensor:
        if index in self._cache:
            return self._cache[index]
        try:
            out = self._read(index, *self.target_size(index))
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"cannot read {self.files[index]}: {e} (data.skip_unreadable=true leaves unreadable "
                             f"files out)") from e
        if self.cache:
            self._cache[index] = out
        return out

    def _frame(self, img) -> np.ndarray:
        img = img.convert("L" if self.channels == 1 else "RGB")
        a = np.asarray(img, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)    # (C, H, W)


class ImageFolderDataset(_FolderDataset):
    """Images -> uint8 (C, H, W)."""

    suffixes = IMAGE_SUFFIXES
    kind = "image"

    def _native_hw(self, path: Path) -> tuple[int, int]:
        from PIL import Image

        with Image.open(path) as im:  # reads the header only
            return im.size[1], im.size[0]

    def _probe(self, path: Path) -> None:
        from PIL import Image

        with Image.open(path) as im:
            im.load()          # the whole picture: a truncated file fails here, not at its header
            eight_bit(im)

    def _read(self, index: int, height: int, width: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as im:
            return torch.from_numpy(self._frame(_resize_crop(eight_bit(im), height, width)).copy())


class VideoFolderDataset(_FolderDataset):
    """Videos (mp4 etc. through PyAV, gif through Pillow) -> uint8 (T, C, H, W): the first
    `num_frames` frames taken every `frame_stride` frames. A shorter clip repeats its last frame."""

    suffixes = VIDEO_SUFFIXES
    kind = "video"

    def __init__(self, root: str | Path, image_size: int, num_frames: int, frame_stride: int = 1, **kwargs):
        if num_frames < 1 or frame_stride < 1:
            raise ValueError("num_frames and frame_stride must be >= 1")
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self._warned = False
        super().__init__(root, image_size, **kwargs)
        self.is_video = True

    def _frames(self, path: Path) -> list[np.ndarray]:
        import imageio.v3 as iio

        need = (self.num_frames - 1) * self.frame_stride + 1
        plugin = "pillow" if path.suffix.lower() == ".gif" else "pyav"
        frames = []
        for i, f in enumerate(iio.imiter(path, plugin=plugin)):
            if i % self.frame_stride == 0:
                frames.append(np.asarray(f))
            if i + 1 >= need:
                break
        if not frames:
            raise ValueError("no frames")
        return [_frame_8bit(f) for f in frames]

    def _native_hw(self, path: Path) -> tuple[int, int]:
        import imageio.v3 as iio

        plugin = "pillow" if path.suffix.lower() == ".gif" else "pyav"
        first = next(iter(iio.imiter(path, plugin=plugin)))
        return first.shape[0], first.shape[1]

    def _probe(self, path: Path) -> None:
        self._frames(path)

    def _read(self, index: int, height: int, width: int) -> torch.Tensor:
        from PIL import Image

        frames = self._frames(self.files[index])
        if len(frames) < self.num_frames:
            if not self._warned:
                warnings.warn(f"{self.files[index]} has {len(frames)} frames (stride {self.frame_stride}), fewer "
                              f"than num_frames={self.num_frames}: repeating its last frame", stacklevel=2)
                self._warned = True
            frames += [frames[-1]] * (self.num_frames - len(frames))
        out = [self._frame(_resize_crop(Image.fromarray(f[..., :3] if f.ndim == 3 else f), height, width))
               for f in frames[:self.num_frames]]
        return torch.from_numpy(np.stack(out))                      # (T, C, H, W)


def _frame_8bit(f: np.ndarray) -> np.ndarray:
    """A decoded video frame with 8 bits per channel (16-bit frames scaled, as data.media.eight_bit)."""
    if f.dtype == np.uint8:
        return f
    if f.dtype == np.uint16:
        return np.round(f.astype(np.float64) * (255 / 65535)).astype(np.uint8)
    raise ValueError(f"frames of {f.dtype} pixels are not read: only 8- and 16-bit videos")
