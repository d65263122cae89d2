import pytest
import torch

from starflow.flow.likelihood import nll
from starflow.sampling.denoise import learned_denoise, score_denoise


def test_score_denoise_is_tweedie_step(make_model):
    model = make_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (grad_logp,) = torch.autograd.grad(-nll(model, xg, y).sum(), [xg])
    torch.testing.assert_close(score_denoise(model, x, y, 0.3), x + 0.09 * grad_logp, atol=1e-10, rtol=1e-10)
    assert torch.equal(score_denoise(model, x, y, 0.0), x)


def test_learned_denoise_formula(make_model):
    model = make_model(learnable_self_denoiser=True, conditional_denoiser=True, temporal_causal=1, shallow_block_local=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(1, 3, 5, generator=g, dtype=torch.float64)
    pred = model.denoise_output(x, y)
    assert pred.shape == x.shape
    torch.testing.assert_close(learned_denoise(model, x, y, 0.5), x - 0.3 * pred)
    # block-causal in time: the first frame's prediction ignores later frames
    x2 = x.clone()
    x2[:, 1] += 1
    torch.testing.assert_close(model.denoise_output(x2, y)[:, 0], pred[:, 0])


@pytest.mark.parametrize("T, window, denoiser_window", [(8, 4, None), (7, 3, 1), (3, 4, None), (5, None, None)])
def test_windowed_denoising_equals_the_official_loop(T, window, denoiser_window):
    from starflow.sampling.denoise import in_windows

    x = torch.randn(2, T, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def full(chunk):   # a step whose output depends on every frame of its chunk
        return chunk * 0.5 + chunk.mean(1, keepdim=True)

    def step(chunk, new):
        calls.append((chunk.size(1), new))
        return full(chunk)

    def last_only(chunk, new):   # a step may return just the frames the window replaces
        return full(chunk)[:, chunk.size(1) - new:]
    # the official loop (utils/inference.py process_denoising): it goes on while its start is inside the video
    ref, s, overlap = x.clone(), 0, 0
    steps = window or T
    official, replaced = 0, []
    while s < T:
        out = full(ref[:, s:s + steps].clone())
        ref[:, s + overlap:s + steps] = out[:, overlap:]
        replaced.append(out.size(1) - overlap)
        overlap = steps - 1 if denoiser_window is None else denoiser_window
        s += steps - overlap
        official += 1
    torch.testing.assert_close(in_windows(step, x, window, denoiser_window), ref, atol=0, rtol=0)
    assert len(calls) <= official and calls[-1][0] >= 1
    # each call is told how many frames it replaces: the official loop's, for the windows that replace any
    assert [new for _, new in calls] == replaced[:len(calls)] and sum(new for _, new in calls) == T
    torch.testing.assert_close(in_windows(last_only, x, window, denoiser_window), ref, atol=0, rtol=0)


def test_learned_denoise_of_the_last_frames_equals_the_whole_chunks(make_model):
    """last_frames: only the new frames' predictions are computed (the trunk's last layer skips the context
    frames), each still made from every frame of the chunk: the whole chunk's last frames."""
    model = make_model(dtype=torch.float64, learnable_self_denoiser=True, conditional_denoiser=True,
                       temporal_causal=1, shallow_block_local=True)
    g = torch.Generator().manual_seed(0)
    c = model.config
    x = torch.randn(2, 4, c.channel_size, c.img_size, c.img_size, generator=g, dtype=torch.float64)
    y = torch.randn(2, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64)
    whole = learned_denoise(model, x, y, 0.3)
    for n in (1, 3, 4):
        part = learned_denoise(model, x, y, 0.3, last_frames=n)
        assert part.shape == (2, n) + x.shape[2:]
        torch.testing.assert_close(part, whole[:, 4 - n:], atol=1e-12, rtol=0)
    assert not torch.equal(whole[:, 3], x[:, 3])                 # the denoiser did change the frames compared
    x[1, 0, 0, 0, 0] = float("nan")                              # a non-finite item passes through, cut the same way
    part = learned_denoise(model, x, y, 0.3, last_frames=2)
    torch.testing.assert_close(part[0], whole[0, 2:], atol=1e-12, rtol=0)
    torch.testing.assert_close(part[1], x[1, 2:], atol=0, rtol=0)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="last_frames"):
            model.denoise_output(x[:1], y[:1], last_frames=bad)


def test_denoising_a_video_in_windows_packs_the_denoiser_once(make_model, packed_layers):
    """Around the windows' loop the denoiser's weights are packed once, not once a window, and the
    result is the one each window packing its own gives (up to the order of sums: the same here)."""
    import starflow.nn.packed as packed
    from starflow.sampling.denoise import denoiser_packed, in_windows

    if not packed.packing_available():
        pytest.skip("this torch build has no oneDNN packed linear ops")
    model = make_model(dtype=torch.float32, learnable_self_denoiser=True, conditional_denoiser=True,
                       temporal_causal=1, shallow_block_local=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, model.config.channel_size, model.config.img_size, model.config.img_size, generator=g)
    y = torch.randn(2, model.config.txt_size, model.config.txt_dim, generator=g)
    made = packed_layers
    step = (lambda chunk, new: learned_denoise(model, chunk, y, 0.3))
    with torch.no_grad():
        each = in_windows(step, x, 2)                      # 5 windows, each packing for itself
        per_window = len(made)
        made.clear()
        with denoiser_packed(model):
            once = in_windows(step, x, 2)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.learnable_self_denoiser.modules())
    assert per_window == 5 * n_linear and len(made) == n_linear
    torch.testing.assert_close(once, each, atol=0, rtol=0)
    # learned_denoise_video: the same windows, packed once, each window computing its new frames only
    made.clear()
    from starflow.sampling.denoise import learned_denoise_video
    torch.testing.assert_close(learned_denoise_video(model, x, y, 0.3, 2), once, atol=1e-6, rtol=0)
    assert len(made) == n_linear


def _video_denoiser_model(make_model, dtype=torch.float32):
    model = make_model(dtype=dtype, learnable_self_denoiser=True, conditional_denoiser=True, temporal_causal=1,
                       shallow_block_local=True)
    c = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, c.channel_size, c.img_size, c.img_size, generator=g).to(dtype)
    y = torch.randn(2, c.txt_size, c.txt_dim, generator=g).to(dtype)
    return model, x, y


def test_a_bf16_denoiser_predicts_from_a_kept_copy_and_updates_in_full_precision(make_model):
    """denoiser_precision "bf16": a bf16 copy of the denoiser (kept while the weights stay, remade after a write)
    predicts; the update is made in x's precision, close to the float32 one but not equal to it."""
    from starflow.sampling.denoise import denoiser_for, learned_denoise_video

    model, x, y = _video_denoiser_model(make_model)
    own = model.learnable_self_denoiser
    low = denoiser_for(model, "bf16")
    assert low is not own and next(low.parameters()).dtype == torch.bfloat16
    assert denoiser_for(model, "bf16") is low and denoiser_for(model, "model") is own
    assert next(own.parameters()).dtype == torch.float32                  # the model's own weights untouched
    full = learned_denoise(model, x, y, 0.3)
    half = learned_denoise(model, x, y, 0.3, precision="bf16")
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    correction = (full - x).abs().max().item()
    assert correction > 0.05 and (half - full).abs().max().item() < 0.05 * correction
    # a window loop predicts with the same copy: each window's new frames as learned_denoise gives them
    video = learned_denoise_video(model, x, y, 0.3, 2, "bf16")
    assert (video - learned_denoise_video(model, x, y, 0.3, 2)).abs().max().item() < 0.05 * correction
    assert not torch.equal(video, learned_denoise_video(model, x, y, 0.3, 2))
    with torch.no_grad():
        own.proj_out.weight.add_(1.0)                                     # a write: the copy follows it
    again = denoiser_for(model, "bf16")
    assert again is not low
    torch.testing.assert_close(again.proj_out.weight, own.proj_out.weight.to(torch.bfloat16), atol=0, rtol=0)


def test_auto_denoiser_precision_follows_native_bf16_and_a_bf16_model_keeps_its_own(make_model, monkeypatch):
    import starflow.sampling.denoise as D

    model, x, y = _video_denoiser_model(make_model)
    own = model.learnable_self_denoiser
    monkeypatch.setattr(D, "native_bf16", lambda device: False)
    assert D.denoiser_for(model, "auto") is own and D.denoiser_for(model, "bf16") is not own
    torch.testing.assert_close(learned_denoise(model, x, y, 0.3, precision="auto"), learned_denoise(model, x, y, 0.3),
                               atol=0, rtol=0)
    monkeypatch.setattr(D, "native_bf16", lambda device: True)
    assert D.denoiser_for(model, "auto") is D.denoiser_for(model, "bf16")
    bf16_model, _, _ = _video_denoiser_model(make_model, torch.bfloat16)
    assert D.denoiser_for(bf16_model, "bf16") is bf16_model.learnable_self_denoiser   # nothing narrower to make
    with pytest.raises(ValueError, match="denoiser precision must be one of"):
        D.denoiser_for(model, "fp8")
    with pytest.raises(ValueError, match="no learnable self-denoiser"):
        D.denoiser_for(make_model(), "bf16")
    with pytest.raises(ValueError, match="no learnable self-denoiser"):      # before anything is packed
        D.learned_denoise_video(make_model(), x, y, 0.3, 2)


def test_sampler_options_check_the_denoiser_precision():
    from starflow.sampling.options import SamplerOptions
    from starflow.strict import ConfigError

    assert SamplerOptions().denoiser_precision == "model"
    assert SamplerOptions(denoiser_precision="auto").with_(denoiser_precision="bf16").denoiser_precision == "bf16"
    with pytest.raises(ConfigError, match="denoiser_precision must be one of"):
        SamplerOptions(denoiser_precision="half")
