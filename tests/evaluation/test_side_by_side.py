"""benchmarks/side_by_side.py: ours and the official code timed in alternation, the ratio per round."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "side_by_side.py"

# stands in for the official transformer_flow: its call signatures (likelihood, loss, reverse sampling with
# [y; y_null], the denoiser call), our numbers
FAKE = '''
import json
import torch
from starflow.flow.io import load_official
from starflow.flow.model import StarFlow
from starflow.sampling.sample import sample

CONFIG = json.loads({config!r})
CALLS = []


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


def _load():
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _checkout(model, tmp_path, monkeypatch):
    cfg = model.config.to_dict()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "transformer_flow.py").write_text(FAKE.format(config=json.dumps(cfg)))
    torch.save({"config": cfg, "state_dict": model.state_dict()}, tmp_path / "m.pt")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "transformer_flow", raising=False)
    return ["--code", str(tmp_path / "code"), "--model", str(tmp_path / "m.pt"), "--threads", "1"]


def test_image_figures_alternate_and_report_the_median_ratio(make_model, tmp_path, capsys, monkeypatch):
    model = make_model(dtype=torch.float32, img_size=4, txt_size=3, txt_dim=5)
    args = _checkout(model, tmp_path, monkeypatch)
    assert _load().main(args + ["--rounds", "3", "--parts", "forward,train,jacobi"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"forward_ms", "train_step_ms", "sample_jacobi_s", "device_name", "loadavg_1m_end"}
    assert "sample_sequential_s" not in res
    for key in ("forward_ms", "train_step_ms", "sample_jacobi_s"):
        fig = res[key]
        assert fig["ours"] > 0 and fig["official"] > 0 and len(fig["ratios"]) == 3
        assert fig["ratio"] == sorted(fig["ratios"])[1]
    # warm-up + 3 rounds of each official figure: forward x4 (the loss steps call it too), reverse x4
    calls = sys.modules["transformer_flow"].CALLS
    assert calls.count("reverse") == 4 and calls.count("forward") == 8
    assert not torch.distributed.is_initialized()


def test_video_model_times_jacobi_with_the_denoiser(make_model, tmp_path, capsys, monkeypatch):
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    args = _checkout(model, tmp_path, monkeypatch)
    assert _load().main(args + ["--rounds", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(k for k in res if isinstance(res[k], dict)) == ["video_jacobi_s"]
    assert res["video_jacobi_s"]["ours"] > 0 and len(res["video_jacobi_s"]["ratios"]) == 1
    calls = sys.modules["transformer_flow"].CALLS
    assert calls.count("reverse") == 2 and calls.count("denoiser") >= 2


def test_refuses_a_missing_checkout_and_bad_rounds(tmp_path):
    with pytest.raises(SystemExit, match="transformer_flow.py"):
        _load().main(["--code", str(tmp_path), "--model", str(tmp_path / "m.pt")])
    (tmp_path / "transformer_flow.py").write_text("")
    with pytest.raises(SystemExit, match="rounds"):
        _load().main(["--code", str(tmp_path), "--model", str(tmp_path / "m.pt"), "--rounds", "0"])


def test_official_baseline_times_the_video_path(make_model, tmp_path, capsys, monkeypatch):
    """official_baseline.py's video figures (the same stand-in checkout): Jacobi + denoiser at 8 frames, its
    error against our sequential sample of the same windowed equations, and the long-video cost per frame."""
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    args = _checkout(model, tmp_path, monkeypatch)
    spec = importlib.util.spec_from_file_location("official_baseline", SCRIPT.with_name("official_baseline.py"))
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    assert base.main(args + ["--sample-repeats", "1", "--long-video-frames", "3,8"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["video_frames"] == 8 and res["video_window"] == 2 and res["video_context"] == 1
    assert res["video_jacobi_s"] > 0 and 0 <= res["video_jacobi_max_abs_err"] < 0.5
    assert set(res["long_video_s_per_frame"]) == {"3", "8"}
    calls = sys.modules["transformer_flow"].CALLS
    assert calls.count("reverse") >= 3 and "denoiser" in calls
    assert not torch.distributed.is_initialized()
