"""One file per generated picture or video (`--out-dir`), as the official sampler's `--caption file.txt
--save_folder 1` writes one file per caption; `prompts.txt` says which prompt made which file."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["write_each", "slug"]


def slug(prompt: str, limit: int = 48) -> str:
    """A file-name-safe short form of a prompt: 'A corgi, 4K!' -> 'a-corgi-4k'."""
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return s[:limit].rstrip("-") or "prompt"


def write_each(items: torch.Tensor, prompts: Sequence[str] | None, per_prompt: int, folder: Path, suffix: str,
               write: Callable[[torch.Tensor, Path], object]) -> list[Path]:
    """Write items[i] (prompt-major: the `per_prompt` samples of prompt 0 first) to `folder` as
    NNNN[_j]_slug<suffix> (NNNN: the prompt's line, j: the sample when there are several), and prompts.txt
    (file, tab, prompt). -> the files, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    files, lines = [], []
    for i, x in enumerate(items):
        k, j = divmod(i, per_prompt)
        name = f"{k:04d}" + (f"_{j}" if per_prompt > 1 else "")
        prompt = prompts[i] if prompts is not None else None
        if prompt is not None:
            name += f"_{slug(prompt)}"
        path = folder / (name + suffix)
        write(x, path)
        files.append(path)
        lines.append(f"{path.name}\t{prompt if prompt is not None else ''}\n")
    (folder / "prompts.txt").write_text("".join(lines))
    return files
