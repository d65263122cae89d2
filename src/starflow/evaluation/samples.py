"""Samples for FID / KID / CLIP score: generated in batches into a folder of PNGs, resumable, reproducible.

Sample i belongs to batch b = i // batch_size; the noise of a batch is drawn from a CPU generator seeded by
(seed, first index of the batch), so a stopped run continues with exactly the samples it would have made, on any
device. `manifest.json` records every setting the samples depend on (and each sample's prompt); a folder made
with other settings is refused rather than mixed. PNG files are written whole (a temporary name, then renamed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..flow.io import atomic_write_text
from ..training.inputs import step_generator

__all__ = ["sample_prompts", "generate_samples", "MANIFEST", "resolved_call"]

MANIFEST = "manifest.json"


def sample_prompts(pipe, count: int, prompts: Sequence[str] | None = None) -> list[str] | None:
    """The prompt of each sample: the given prompts in turn; for class-conditional models every class in turn
    (balanced, as class-conditional FID is computed); None for unconditional models."""
    from .sources import condition_of

    mode = condition_of(pipe)
    if mode == "none":
        return None
    if prompts:
        prompts = list(prompts)
    elif mode == "labels":
        k = int(str(pipe.text_encoder_spec).split(":", 1)[1])
        prompts = [str(i) for i in range(k)]
    else:
        raise ValueError("this model is text conditioned: give the prompts (--prompts-file, or data with captions)")
    return [prompts[i % len(prompts)] for i in range(count)]


def resolved_call(pipe, call: dict[str, Any]) -> dict[str, Any]:
    """The generation settings as they take effect: the call's, the pipeline's defaults filling the gaps."""
    d = pipe.defaults
    out = {**d.sampling.to_dict(), "denoise": d.denoise, "noise_std": d.noise_std}
    out.pop("progress")
    out.update({k: v for k, v in call.items() if v is not None})
    return out


def _save_png(x: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from ..data.media import to_uint8

    a = to_uint8(x)                                    # (H, W, C) uint8, the rule of every file we write
    img = Image.fromarray(a[..., 0], "L") if a.shape[-1] == 1 else Image.fromarray(a[..., :3], "RGB")
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def generate_samples(pipe, folder: str | Path, count: int, prompts: list[str] | None, *, seed: int = 0,
                     batch_size: int = 16, call: dict[str, Any] | None = None, model_info: dict | None = None,
                     progress: bool = True) -> tuple[list[Path], dict[str, Any]]:
    """Generate `count` pictures into `folder` (000000.png ...), reusing those a previous identical run made.
    -> (the files in order, the settings recorded in the manifest)."""
    if pipe.kind != "image":
        raise ValueError("sample-based figures (FID, KID, CLIP score) are computed on pictures: give an image model")
    if count < 2:
        raise ValueError("need at least 2 samples")
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    if prompts is not None and len(prompts) != count:
        raise ValueError(f"{len(prompts)} prompts for {count} samples")
    call = {k: v for k, v in (call or {}).items() if v is not None}
    settings = {"model": model_info or {}, "num_samples": count, "seed": seed, "batch_size": batch_size,
                "noise": "CPU torch.Generator per batch, seeded by (seed, first sample index)",
                **resolved_call(pipe, call)}
    settings = json.loads(json.dumps(settings, default=str))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("settings") != settings or old.get("prompts") != prompts:
            diff = sorted(k for k in set(old.get("settings", {})) | set(settings)
                          if old.get("settings", {}).get(k) != settings.get(k)) or ["prompts"]
            raise ValueError(f"{folder} holds samples made with other settings ({', '.join(diff)} differ): "
                             f"delete it, or choose another samples folder")
    else:
        atomic_write_text(manifest, json.dumps({"settings": settings, "prompts": prompts}, indent=1))
    files = [folder / f"{i:06d}.png" for i in range(count)]
    starts = range(0, count, batch_size)
    bar = tqdm(total=count, unit="img", desc="sampling", dynamic_ncols=True, disable=not progress)
    for s in starts:
        e = min(s + batch_size, count)
        if all(f.exists() for f in files[s:e]):
            bar.update(e - s)
            continue
        g = step_generator(seed, s)
        kw = dict(call, generator=g, output_type="pt", progress=False)
        if prompts is None:
            out = pipe(None, num_images=e - s, **kw)
        else:
            out = pipe(prompts[s:e], num_images_per_prompt=1, **kw)
        for x, f in zip(out.images * 2 - 1, files[s:e]):
            _save_png(x, f)
        bar.update(e - s)
    bar.close()
    return files, settings
