"""Where results go: checked before the work starts, and files written whole or not at all.

A command that samples for minutes or trains for hours must not find out at the end that its output cannot be
written, and must not replace what it finds there unless asked: an existing output is replaced only with
`--overwrite` (the `overwrite=True` of these checks), and a folder that is not one we write is never replaced.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["OutputError", "check_writable_dir", "check_output_file", "check_output_folder", "atomic_file"]


class OutputError(ValueError):
    """An output path that cannot or may not be written."""


def check_writable_dir(folder: str | Path, what: str = "output folder", create: bool = True) -> Path:
    """Prove that files can be written in `folder`: created (with its parents) when `create`, else the nearest
    folder that exists is probed (where the missing ones would be made), so that a failed check leaves nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder")
    probe_in = folder
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            while not probe_in.exists():
                probe_in = probe_in.parent
            if not probe_in.is_dir():
                raise NotADirectoryError(20, f"{probe_in} is a file")
        # os.access says yes to root on a read-only mount: only writing a file tells
        fd, probe = tempfile.mkstemp(prefix=".starflow-write-test-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write to {folder} ({what}): {e.strerror or e}") from None
    return folder


def check_output_file(path: str | Path, overwrite: bool = False, flag: str = "--out") -> Path:
    """An output file: not a folder, replaced only with `overwrite`, in a place where files can be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder: give a file name inside it, e.g. "
                          f"{path / ('output' + (path.suffix or '.png'))}")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another name")
    check_writable_dir(path.parent, f"the folder of {flag} {path}", create=False)
    return path


def check_output_folder(path: str | Path, overwrite: bool = False, marker: str | None = None,
                        flag: str = "--out") -> Path:
    """An output folder written whole: a new or empty one, or, with `overwrite`, one of ours (holding `marker`):
    a folder of other files is never replaced."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        if marker is not None and not (path / marker).exists():
            raise OutputError(f"{flag} {path} is a folder of other files (no {marker}): it would be replaced "
                              f"whole; choose a new folder name")
        if not overwrite:
            raise OutputError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another name")
    check_writable_dir(path.parent, f"the folder of {flag} {path}", create=False)
    return path


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by it still work); when the block
    ends without error it replaces `path`. A kill or a full disk leaves the old file or none, never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
