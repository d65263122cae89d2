"""The README's Python API section runs as written (the official files: scaled-down copies, tests/official_tiny)."""
import re
import runpy
from pathlib import Path

import torch

from .official_tiny import write_official

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_runs(tmp_path, monkeypatch):
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    script = tmp_path / "readme_api.py"
    script.write_text(code)
    models = {kind: write_official(kind, tmp_path)[2] for kind in ("image", "video")}   # at the README's paths
    monkeypatch.chdir(tmp_path)                 # it saves a model folder
    ns = runpy.run_path(str(script))
    assert ns["x"].shape == (2, 4, 32, 32) and ns["nats"].shape == (2,)
    assert (tmp_path / "my-flow" / "model.safetensors").exists()
    for name, kind in (("t2i", "image"), ("t2v", "video")):
        loaded, ref = ns[name], models[kind]
        arch = {k: v for k, v in loaded.config.to_dict().items() if k != "extra"}   # extra: the file's other keys
        assert arch == ref.config.to_dict() and not loaded.training
        assert loaded.config.extra["vae"] == ("stabilityai/sd-vae-ft-ema" if kind == "image"
                                              else "Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6")
        for k, v in ref.state_dict().items():
            assert loaded.state_dict()[k].dtype == torch.bfloat16
            assert torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16)), k
