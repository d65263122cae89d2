"""Resolve pretrained weights from a local directory or the local Hugging Face cache, never the network.

Users name weights either by a local directory or by a hub id (`google/flan-t5-xl`). A hub id is only
looked up in the local cache; when it is not there we raise `MissingWeightsError`, whose message says
what to download and how to pass it, instead of letting transformers/diffusers try the network.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

__all__ = ["MissingWeightsError", "hub_offline", "resolve_pretrained", "download_hint"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are not on this machine (we never download them implicitly)."""


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Force Hugging Face libraries offline for the duration of a load.

    `local_files_only=True` already avoids downloads; the flag also stops metadata look-ups that some
    code paths make. huggingface_hub reads HF_HUB_OFFLINE once at import, so we patch its constant too.
    """
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        hc = None
    saved_const = getattr(hc, "HF_HUB_OFFLINE", None)
    if hc is not None:
        hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hc is not None:
            hc.HF_HUB_OFFLINE = saved_const
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def download_hint(ref: str, spec_prefix: str, include: str | None = None) -> str:
    inc = f' --include "{include}"' if include else ""
    return (f"download it once with\n"
            f"    hf download {ref}{inc} --local-dir <DIR>\n"
            f"(older huggingface_hub: huggingface-cli download {ref}{inc} --local-dir <DIR>)\n"
            f"and pass it as '{spec_prefix}<DIR>'")


def resolve_pretrained(ref: str, *, what: str, spec_prefix: str, include: str | None = None) -> Path:
    """Local directory for `ref` (a directory, or a hub id found in the local HF cache).

    what: human name for messages ("T5 text encoder"); spec_prefix: how the user passes a directory
    ("t5:"); include: the `--include` pattern to suggest for partial downloads ("vae/*").
    """
    if not ref:
        raise ValueError(f"{what}: empty model reference; expected a local directory or a hub id")
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MissingWeightsError(f"{what}: {ref} is a file; expected a model directory (with config.json)")
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):  # a path, not an <org>/<name> hub id
        raise MissingWeightsError(f"{what}: directory {ref} does not exist. If you meant a Hugging Face hub id, "
                                  f"{download_hint('<org>/<name>', spec_prefix, include)}")
    try:
        from huggingface_hub import snapshot_download
        with hub_offline():
            local = snapshot_download(ref, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, OfflineModeIsEnabled, OSError...
        raise MissingWeightsError(
            f"{what} '{ref}' is not on this machine (no directory of that name and not in the local Hugging "
            f"Face cache); starflow never downloads weights by itself. To use it, "
            f"{download_hint(ref, spec_prefix, include)}") from e
    return Path(local)
