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
            rope=True, sos=True, txt_size=3, txt_dim=5, cond_top_only=True, use_softplus=True, use_final_norm=True, soft_clip=2.0,
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
def packed_layers(monkeypatch) -> list:
    """The Linear layers starflow.nn.packed packs during a test, in order (a spy on each packing)."""
    from starflow.nn import packed

    made, real = [], packed._PackedForward.__init__

    def spy(self, layer):
        made.append(layer)
        real(self, layer)
    monkeypatch.setattr(packed._PackedForward, "__init__", spy)
    return made


@pytest.fixture
def conformance_dir() -> Path:
    return Path(os.environ.get("STARFLOW_CONFORMANCE_DIR", ASSETS / "conformance"))


@pytest.fixture
def write_legacy_export():
    """Write a `starflow train` export as starflow 0.1 did: config.json (0/1 booleans, the run's config)
    + model.safetensors. Newer versions still read it."""
    import json

    from safetensors.torch import save_file

    def write(folder: Path, flow: StarFlow, train: dict) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        model = {k: int(v) if isinstance(v, bool) else v for k, v in flow.config.to_dict().items()}
        (folder / "config.json").write_text(json.dumps({"model": model, "train": train}))
        save_file({k: v.contiguous() for k, v in flow.state_dict().items()}, str(folder / "model.safetensors"))
        return folder
    return write
