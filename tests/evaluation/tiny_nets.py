"""Tiny random stand-ins for the real evaluation networks, written to disk in the real files' formats."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from starflow.evaluation.inception import INCEPTION_FILE

# a few steps of a ~28k-parameter class-conditional digits flow (dequantised, gaussianized, EMA)
TINY_RUN = ["model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1",
            "model.patch_size=2", "model.rope=false", "data.dataset=digits", "data.condition=labels",
            "data.dequantize=true", "data.gaussianize=true", "optim.lr=3e-3", "optim.warmup_steps=2",
            "optim.max_steps=4", "optim.batch_size=16", "optim.num_threads=1", "optim.precision=fp32", "optim.ema=0.5",
            "log.log_every=1", "log.progress=false", "log.sample_every=-1", "log.plot=false", "log.eval_draws=2",
            "log.eval_max_items=24"]


def train_tiny_digits(out: Path, *extra: str) -> tuple[Path, float]:
    """-> (the trained model folder, the run's own held-out bits/dim: 24 items, 2 draws)."""
    from starflow.training import load_train_config, train

    result = train(load_train_config(None, TINY_RUN + [f"log.out_dir={out}", *extra]))
    return result.checkpoint_dir, result.test_bpd


class TinyInception(torch.nn.Module):
    """Inception-shaped: RGB floats in [0, 255] of any size, resized inside, `return_features=True` -> (N, dim)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(8, dim, 3)
        self.fc = torch.nn.Linear(dim, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
        x = (x - 128) / 128
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        f = x.mean([2, 3])
        if return_features:
            return f
        return self.fc(f)


def write_tiny_inception(folder: Path, dim: int = 16, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INCEPTION_FILE
    with warnings.catch_warnings():       # TorchScript is deprecated, but it is the reference network's format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyInception(dim).eval()).save(str(path))
    return path


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of bytes that byte-level BPE vocabularies (GPT-2, CLIP) are made of."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def write_tiny_clip(folder: Path, seed: int = 1) -> Path:
    """A randomly initialised CLIP (a few thousand parameters) with a byte-level tokenizer and a 16-pixel image
    processor, saved like a hub folder (config.json, model.safetensors, tokenizer and preprocessor files)."""
    import json

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77,
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=16, patch_size=8),
                     projection_dim=8)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(folder)
    return folder
