"""A stand-in for an apple/ml-starflow checkout, for the benchmark scripts that import its transformer_flow:
the official Model's call signatures (likelihood, loss, reverse sampling with [y; y_null], the denoiser call)
over our numbers, and a record of how it was called."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SOURCE = '''
import json
import torch
from starflow.flow.io import load_official
from starflow.flow.model import StarFlow
from starflow.sampling.sample import sample

CONFIG = json.loads({config!r})
AUTOCAST = []   # whether each likelihood forward ran under CPU autocast
CALLS = []      # "forward", "reverse" or "denoiser", in order


class _Official(StarFlow):
    def forward(self, x, y, reverse=False, denoiser=False, guidance=0.0, jacobi=0, jacobi_th=1e-3,
                jacobi_block_size=16, jacobi_max_iter=32, context_length=None, **kw):
        CALLS.append("reverse" if reverse else "denoiser" if denoiser else "forward")
        if denoiser:
            return self.denoise_output(x, y)
        if reverse:
            yc, yn = y.chunk(2)
            window = self.config.local_attn_window if x.dim() == 5 else None
            return sample(self, x, yc, yn, method="jacobi" if jacobi else "sequential", guidance=guidance,
                          jacobi_th=jacobi_th, jacobi_block_size=jacobi_block_size, jacobi_max_iter=jacobi_max_iter,
                          attn_window=window, context_length=context_length)
        AUTOCAST.append(torch.is_autocast_enabled("cpu"))
        out = super().forward(x, y)
        return out.z, None, out.block_outputs, out.logdets

    def get_loss(self, z, logdets):
        lz, ll = self.loss_terms(z, logdets)
        return {{"loss": (lz + ll).mean()}}


def Model(**kw):
    m = load_official(CONFIG)
    m.__class__ = _Official
    return m
'''


def write_checkout(model, tmp_path: Path, monkeypatch) -> list[str]:
    """Write the stand-in checkout and the model file for `model`; returns the scripts' --code / --model
    arguments. sys.path and a cached transformer_flow module are restored after the test (monkeypatch)."""
    cfg = model.config.to_dict()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "transformer_flow.py").write_text(SOURCE.format(config=json.dumps(cfg)))
    torch.save({"config": cfg, "state_dict": model.state_dict()}, tmp_path / "m.pt")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "transformer_flow", raising=False)
    return ["--code", str(tmp_path / "code"), "--model", str(tmp_path / "m.pt")]


def load_script(name: str):
    """benchmarks/<name>.py as a module (the benchmarks folder is not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
