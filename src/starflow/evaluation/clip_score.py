"""CLIP score of generated pictures against their prompts, with a local CLIP (transformers) and torchmetrics.

score = 100 * cos(image embedding, prompt embedding), averaged over the pictures (torchmetrics' CLIPScore).
The CLIP is read from a local folder (or the Hugging Face cache) and never downloaded: a missing one gives an
error that says what to download.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .fid import PictureSource

__all__ = ["load_clip", "clip_score", "CLIP_HINT"]

CLIP_HINT = ("download a CLIP into a folder (for example openai/clip-vit-large-patch14, as text-to-image papers use: "
             "config.json, model.safetensors, the tokenizer and preprocessor files) and pass --clip FOLDER")


def _features(out) -> torch.Tensor:
    """transformers >= 5 returns the projected embeddings as the pooler output of a model output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class _ClipFeatures(torch.nn.Module):
    """The two methods torchmetrics calls, returning embedding tensors whatever the transformers version."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, pixel_values):
        return _features(self.clip.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return _features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_clip(name_or_path: str | Path, device: str | torch.device = "cpu"):
    """(model, processor) from a local folder or a model id already in the Hugging Face cache (offline)."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    where = str(name_or_path)
    if Path(where).exists() and not (Path(where) / "config.json").exists():
        raise FileNotFoundError(f"{where} holds no CLIP (no config.json): {CLIP_HINT}")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()        # the loading bars and backend notes of transformers
    hf_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(where, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"CLIP {where!r} not found locally ({str(e).splitlines()[0]}): {CLIP_HINT}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return _ClipFeatures(model.eval().to(device)), processor


def clip_score(clip, source: PictureSource, prompts: Sequence[str], *, batch_size: int = 50,
               progress: bool = True) -> float:
    """Mean CLIP score of the pictures of `source` (N) against `prompts` (N, in the same order).
    clip: (model, processor) from `load_clip`."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(prompts) != source.count:
        raise ValueError(f"{source.count} pictures for {len(prompts)} prompts")
    model, processor = clip
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    device = next(model.parameters()).device
    with torch.no_grad():
        for b in tqdm(range(0, source.count, batch_size), desc="CLIP score", disable=not progress):
            e = min(b + batch_size, source.count)
            metric.update(source.read(b, e).to(device), list(prompts[b:e]))
    return float(metric.compute())
