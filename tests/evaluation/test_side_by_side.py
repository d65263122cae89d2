"""benchmarks/side_by_side.py: ours and the official code timed in alternation, the ratio per round."""
import json
import sys

import pytest
import torch

from .fake_official import load_script, write_checkout


def _load():
    return load_script("side_by_side")


def _checkout(model, tmp_path, monkeypatch):
    return write_checkout(model, tmp_path, monkeypatch) + ["--threads", "1"]


def test_image_figures_alternate_and_report_the_median_ratio(make_model, tmp_path, capsys, monkeypatch):
    model = make_model(dtype=torch.float32, img_size=4, txt_size=3, txt_dim=5)
    args = _checkout(model, tmp_path, monkeypatch)
    script = _load()
    monkeypatch.setattr(script, "native_bf16", lambda device: False)     # float32 steps only
    assert script.main(args + ["--rounds", "3", "--parts", "forward,train,jacobi"]) == 0
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


def test_where_bf16_is_native_the_training_step_is_timed_under_autocast_too(make_model, tmp_path, capsys,
                                                                           monkeypatch):
    model = make_model(dtype=torch.float32, img_size=4, txt_size=3, txt_dim=5)
    args = _checkout(model, tmp_path, monkeypatch)
    script = _load()
    monkeypatch.setattr(script, "native_bf16", lambda device: True)
    assert script.main(args + ["--rounds", "2", "--parts", "train"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["train_step_autocast_ms"]["official"] > 0 and len(res["train_step_autocast_ms"]["ratios"]) == 2
    autocast = sys.modules["transformer_flow"].AUTOCAST
    assert autocast.count(True) == 3 and autocast.count(False) == 3     # warm-up + 2 rounds of each step


def test_where_bf16_is_native_jacobi_is_timed_with_the_draft_too(make_model, tmp_path, capsys, monkeypatch):
    model = make_model(dtype=torch.float32, img_size=4, txt_size=3, txt_dim=5)
    args = _checkout(model, tmp_path, monkeypatch)
    script = _load()
    drafts = []
    real = script.sample
    monkeypatch.setattr(script, "sample", lambda *a: drafts.append(a[-1].jacobi_draft) or real(*a))
    monkeypatch.setattr(script, "native_bf16", lambda device: True)
    assert script.main(args + ["--rounds", "2", "--parts", "jacobi"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["sample_jacobi_draft_s"]["ratios"]) == 2 and len(res["sample_jacobi_s"]["ratios"]) == 2
    assert drafts.count("bf16") == 3 and drafts.count("none") == 3      # warm-up + 2 rounds of each
    assert sys.modules["transformer_flow"].CALLS.count("reverse") == 6


def _video_run(make_model, tmp_path, capsys, monkeypatch, *options: str) -> dict:
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    args = _checkout(model, tmp_path, monkeypatch)
    script = _load()
    monkeypatch.setattr(script, "native_bf16", lambda device: False)     # no draft figure (its own test)
    assert script.main(args + list(options)) == 0
    return json.loads(capsys.readouterr().out)


def test_video_model_times_jacobi_with_the_denoiser(make_model, tmp_path, capsys, monkeypatch):
    res = _video_run(make_model, tmp_path, capsys, monkeypatch, "--rounds", "1", "--long-video-frames", "")
    assert list(k for k in res if isinstance(res[k], dict) and "ratios" in res[k]) == ["video_jacobi_s"]
    assert res["video_jacobi_s"]["ours"] > 0 and len(res["video_jacobi_s"]["ratios"]) == 1
    calls = sys.modules["transformer_flow"].CALLS
    assert calls.count("reverse") == 2 and calls.count("denoiser") >= 2


def test_where_bf16_is_native_the_video_is_timed_with_the_draft_too(make_model, tmp_path, capsys, monkeypatch):
    script = _load()
    monkeypatch.setattr(script, "native_bf16", lambda device: True)
    drafts = []
    real = script._sampler

    def sampler(model, denoise):
        run = real(model, denoise)
        return lambda o, *a: drafts.append((o.jacobi_draft, o.denoiser_precision)) or run(o, *a)
    monkeypatch.setattr(script, "_sampler", sampler)
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    args = _checkout(model, tmp_path, monkeypatch)
    assert script.main(args + ["--rounds", "1", "--long-video-frames", ""]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["video_jacobi_draft_s"]["official"] > 0 and len(res["video_jacobi_draft_s"]["ratios"]) == 1
    # warm-up + 1 round of each: the drafted figure with the bench's denoiser (auto), the float32 one the model's
    assert drafts.count(("bf16", "auto")) == 2 and drafts.count(("none", "model")) == 2
    assert res["video_draft_denoiser_precision"] == "auto"
    drafts.clear()
    assert script.main(args + ["--rounds", "1", "--long-video-frames", "", "--denoiser-precision", "model"]) == 0
    assert drafts.count(("bf16", "model")) == 2 and drafts.count(("none", "model")) == 2


def test_video_figures_can_pool_several_inputs(make_model, tmp_path, capsys, monkeypatch):
    """--video-inputs N: each timed call samples the bench's input and the next N - 1 seeds, on both sides, and the
    figures are per input."""
    script = _load()
    monkeypatch.setattr(script, "native_bf16", lambda device: False)
    seeds = []
    real = script.random_inputs
    monkeypatch.setattr(script, "random_inputs", lambda m, b, seed, *a, **k: seeds.append(seed) or real(m, b, seed,
                                                                                                       *a, **k))
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    args = _checkout(model, tmp_path, monkeypatch)
    assert script.main(args + ["--rounds", "1", "--long-video-frames", "", "--video-inputs", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["video_inputs"] == 3 and seeds == [2, 3, 4]
    assert res["video_jacobi_s"]["ours"] > 0 and len(res["video_jacobi_s"]["ratios"]) == 1
    assert sys.modules["transformer_flow"].CALLS.count("reverse") == 2 * 3     # warm-up + 1 round, 3 inputs each


def test_video_model_times_long_videos_in_the_same_rounds(make_model, tmp_path, capsys, monkeypatch):
    res = _video_run(make_model, tmp_path, capsys, monkeypatch, "--rounds", "2", "--long-video-frames", "3,8")
    assert {"video_jacobi_s", "long_video_s[3]"} <= set(res) and "long_video_s[8]" not in res
    for side in ("ours", "official"):
        per = res[f"long_video_s_per_frame_{side}"]
        assert set(per) == {"3", "8"}
        assert per["3"] == round(res["long_video_s[3]"][side] / 3, 4)
        assert per["8"] == round(res["video_jacobi_s"][side] / 8, 4)
        assert res[f"long_video_flatness_{side}"] == round(max(per.values()) / min(per.values()), 3)
        added = (res["video_jacobi_s"][side] - res["long_video_s[3]"][side]) / 5
        assert res[f"long_video_s_per_added_frame_{side}"] == {"3-8": round(added, 4)}
    # warm-up + 2 rounds, two lengths
    assert sys.modules["transformer_flow"].CALLS.count("reverse") == 6


def test_refuses_a_missing_checkout_and_bad_rounds(tmp_path):
    with pytest.raises(SystemExit, match="transformer_flow.py"):
        _load().main(["--code", str(tmp_path), "--model", str(tmp_path / "m.pt")])
    (tmp_path / "transformer_flow.py").write_text("")
    with pytest.raises(SystemExit, match="rounds"):
        _load().main(["--code", str(tmp_path), "--model", str(tmp_path / "m.pt"), "--rounds", "0"])
    with pytest.raises(SystemExit, match="video-inputs"):
        _load().main(["--code", str(tmp_path), "--model", str(tmp_path / "m.pt"), "--video-inputs", "0"])


def test_official_baseline_times_the_video_path(make_model, tmp_path, capsys, monkeypatch):
    """official_baseline.py's video figures (the same stand-in checkout): Jacobi + denoiser at 8 frames, its
    error against our sequential sample of the same windowed equations, and the long-video cost per frame."""
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True, local_attn_window=2,
                       learnable_self_denoiser=True, conditional_denoiser=True)
    args = _checkout(model, tmp_path, monkeypatch)
    base = load_script("official_baseline")
    assert base.main(args + ["--sample-repeats", "1", "--long-video-frames", "3,8"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["video_frames"] == 8 and res["video_window"] == 2 and res["video_context"] == 1
    assert res["video_jacobi_s"] > 0 and 0 <= res["video_jacobi_max_abs_err"] < 0.5
    assert set(res["long_video_s_per_frame"]) == {"3", "8"}
    calls = sys.modules["transformer_flow"].CALLS
    assert calls.count("reverse") >= 3 and "denoiser" in calls
    assert not torch.distributed.is_initialized()
