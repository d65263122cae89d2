"""A tiny trained digits model and a tiny video bench model file, shared by the evaluation tests."""
from __future__ import annotations

import pytest
import torch

from .tiny_nets import train_tiny_digits


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """(the trained model folder, the training run's own held-out bits/dim: 24 items, 2 draws)."""
    return train_tiny_digits(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture
def video_model_file(make_model, tmp_path):
    """A bench model file (official config + state dict) of a tiny video model: frame-causal, per-frame shallow
    blocks, an attention window of 2 latent frames, a conditional learnable denoiser."""
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    path = tmp_path / "tiny_video.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    return path
