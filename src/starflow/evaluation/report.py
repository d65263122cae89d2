"""The evaluation report: a table for the terminal and a JSON file holding every setting behind each figure."""
from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["table_rows", "format_table", "write_report", "file_identity"]


def file_identity(path: str | Path) -> dict[str, Any]:
    """Enough to tell a weights file from another without hashing gigabytes: path, size, modification time."""
    p = Path(path)
    if not p.exists():
        return {"path": str(p)}
    st = p.stat()
    return {"path": str(p.resolve()), "bytes": st.st_size,
            "modified": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    return str(v)


def table_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(figure, value, +-, what) rows from the results section of a report."""
    rows = []
    for name, r in results.items():
        if name == "bpd":
            rows.append(("bits/dim" if r["unit"] == "bits/dim" else "bits/latent dim", _fmt(r["bpd"]),
                         _fmt(r["stderr"]), f"{r['items']} items x {r['draws']} draws, {r['protocol']['noise']['kind']}"
                         + (f", {r['protocol']['input_transform']['kind']}" if r["protocol"].get("input_transform")
                            else "") + ("; NOT comparable with pixel bits/dim" if r["unit"] != "bits/dim" else "")))
        elif name == "fid":
            rows.append(("FID", _fmt(r["fid"]), "", f"{r['num_generated']} samples vs {r['num_reference']} reference"))
        elif name == "kid":
            rows.append(("KID", _fmt(r["kid_mean"]), _fmt(r["kid_std"]),
                         f"{r['subsets']} subsets of {r['subset_size']} (std over subsets)"))
        elif name == "clip-score":
            rows.append(("CLIP score", _fmt(r["clip_score"], 2), "", f"{r['num_samples']} samples, {r['clip']}"))
        elif name == "prompt-accuracy":
            rows.append(("prompt accuracy", _fmt(r["accuracy"], 3), "",
                         f"{r['num_samples']} samples; classifier test accuracy {r['classifier_test_accuracy']:.3f}"))
    return rows


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("figure", "value", "+-", "how")) -> str:
    rows = [header] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()   # noqa: E731
    return "\n".join([line(rows[0]), line(tuple("-" * w for w in widths))] + [line(r) for r in rows[1:]])


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"starflow_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": os.uname().nodename if hasattr(os, "uname") else "", **report}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(full, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
