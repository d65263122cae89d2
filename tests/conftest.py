import os
from pathlib import Path

import pytest
import torch

from starflow import ModelConfig, StarFlow

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Test models are tiny: one intra-op thread is fastest, and extra threads only spin against other
    processes on a shared CPU (a 2-thread run measured 20x slower than 1 thread under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TINY = dict(channel_size=2, img_size=4, patch_size=1, channels=48, blocks=3, layers_per_block=[1, 1, 2], head_dim=24,
            rope=1, sos=1, txt_size=3, txt_dim=5, cond_top_only=1, use_softplus=1, use_final_norm=1, soft_clip=2.0,
            seq_order="L2R")


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Give every parameter (zero-initialised heads and norms too) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


@pytest.fixture
def make_model():
    def make(dtype=torch.float64, seed=0, **overrides):
        cfg = ModelConfig.from_dict({**TINY, **overrides})
        torch.manual_seed(seed)
        return randomize(StarFlow(cfg), seed).to(dtype).eval()
    return make


@pytest.fixture
def conformance_dir() -> Path:
    return Path(os.environ.get("STARFLOW_CONFORMANCE_DIR", ASSETS / "conformance"))
