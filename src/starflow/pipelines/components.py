"""Pipeline components from their specs ("t5:/models/flan-t5-xl", "labels:10", "kl:./autoencoder"...)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["load_text_encoder_spec", "load_autoencoder_spec", "spec_of", "split_spec", "copy_component"]


def load_text_encoder_spec(spec: str | None, length: int, root: Path | None = None, dtype=None):
    """Spec -> text encoder (None for unconditional models). `kind:./x` paths are relative to `root`; `dtype`:
    the weights' dtype of transformer encoders (their embeddings are float32 regardless)."""
    if spec is None:
        return None
    from ..conditioning import load_text_encoder   # lazily: pulls in transformers

    return load_text_encoder(_resolve_local(spec, root), length, dtype=dtype)


def spec_of(component: Any) -> str | None:
    """The spec a loaded component was built from, when it says (`spec`, or a spec-like `name`)."""
    if component is None:
        return None
    spec = getattr(component, "spec", None)
    if isinstance(spec, str):
        return spec
    name = getattr(component, "name", None)
    if isinstance(name, str) and name:
        return name
    if type(component).__name__ == "LabelEncoder" and hasattr(component, "num_classes"):
        return f"labels:{component.num_classes}"
    return None


def load_autoencoder_spec(spec: str | None, root: Path | None = None, dtype=None):
    """Spec -> autoencoder; None / "identity" -> None (the flow models pixels; the pipeline skips coding).
    `dtype`: the weights' dtype (latents and pixels are float32 regardless)."""
    if spec is None or split_spec(spec)[0] in ("identity", "none", "pixels"):
        return None
    from ..autoencoders import load_autoencoder   # lazily: pulls in diffusers

    return load_autoencoder(_resolve_local(spec, root), dtype=dtype)


def split_spec(spec: str) -> tuple[str, str]:
    kind, _, rest = spec.partition(":")
    return kind, rest


def _resolve_local(spec: str, root: Path | None) -> str:
    kind, rest = split_spec(spec)
    if root is not None and rest.startswith("./"):
        return f"{kind}:{(root / rest).resolve()}"
    return spec


def copy_component(spec: str | None, directory: Path, name: str) -> str | None:
    if not spec:
        return spec
    kind, rest = split_spec(spec)
    src = Path(rest) if rest else None
    if src is None or not src.is_dir():
        return spec   # a hub id, a built-in or a label count: kept as a reference
    dst = directory / name
    if src.resolve() != dst.resolve():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    return f"{kind}:./{name}"
