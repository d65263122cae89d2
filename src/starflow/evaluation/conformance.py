"""Run official conformance vectors (format `starflow-conformance/1`) against our implementation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..flow.io import load_conformance_file, load_official
from ..sampling.denoise import score_denoise
from ..sampling.sample import SamplerOptions, sample

__all__ = ["CaseResult", "run_file", "run_dir", "UnknownOpError"]

FORMAT = "starflow-conformance/1"


class UnknownOpError(ValueError):
    pass


@dataclass
class CaseResult:
    model: str
    op: str
    detail: str
    max_err: float
    atol: float
    passed: bool


def _flatten(v):
    if isinstance(v, (list, tuple)):
        for a in v:
            yield from _flatten(a)
    else:
        yield v


def _compare(actual: dict, expected: dict, atol: float, rtol: float) -> tuple[float, bool]:
    worst, ok = 0.0, True
    for key, exp in expected.items():
        if key not in actual:
            raise KeyError(f"no output {key!r}")
        acts, exps = list(_flatten(actual[key])), list(_flatten(exp))
        if len(acts) != len(exps):
            return math.inf, False
        for a, e in zip(acts, exps):
            a = torch.as_tensor(a).detach().float().cpu()
            e = torch.as_tensor(e).float()
            if a.shape != e.shape:
                return math.inf, False
            err = (a - e).abs().max().item() if a.numel() else 0.0
            worst = max(worst, err)
            try:
                torch.testing.assert_close(a, e, atol=atol, rtol=rtol)
            except AssertionError:
                ok = False
    return worst, ok


def run_case(model, case: dict) -> dict:
    op, p, inp = case["op"], case.get("params", {}) or {}, case["inputs"]
    x, y = inp.get("x"), inp.get("y")
    if op == "forward":
        with torch.no_grad():
            out = model(x, y, guidance=float(p.get("guidance", 0.0)))
        lz, ll = model.loss_terms(out.z, out.logdets)
        return {"z": out.z, "block_outputs": out.block_outputs, "logdets": out.logdets, "loss": (lz + ll).mean()}
    if op == "sample":
        known = {"guidance", "method", "jacobi_block_size", "jacobi_th", "jacobi_max_iter", "context_length",
                 "attn_temp", "annealed_guidance"}
        unknown = set(p) - known
        if unknown:
            raise UnknownOpError(f"unknown sample params {sorted(unknown)}")
        opts = SamplerOptions(**{k: v for k, v in p.items()})
        return {"x": sample(model, inp["z"], y, inp.get("y_null"), opts, prefix=inp.get("prefix"))}
    if op == "self_denoise":
        return {"x": score_denoise(model, x, y, float(p["noise_std"]))}
    if op == "denoiser":
        with torch.no_grad():
            return {"out": model.denoise_output(x, y)}
    raise UnknownOpError(f"unknown op {op!r}")


def _detail(case: dict) -> str:
    p = case.get("params", {}) or {}
    bits = [f"{k}={v}" for k, v in p.items()]
    if "prefix" in case["inputs"]:
        bits.append("prefix")
    return " ".join(bits)


def run_file(path: str | Path) -> list[CaseResult]:
    data = load_conformance_file(path)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    name = data.get("name", Path(path).stem)
    model = load_official(data["config"], data["state_dict"])
    results = []
    for case in data.get("cases", []):
        actual = run_case(model, case)
        err, ok = _compare(actual, case["outputs"], float(case["atol"]), float(case.get("rtol", 0.0)))
        results.append(CaseResult(name, case["op"], _detail(case), err, float(case["atol"]), ok))
    return results


def run_dir(directory: str | Path) -> list[Path]:
    files = sorted(Path(directory).glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"no conformance vector files (*.pt) in {directory}")
    return files
