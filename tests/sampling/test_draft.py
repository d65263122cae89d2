import pytest
import torch

from starflow.sampling import draft as draft_mod
from starflow.sampling.draft import draft_copy, fast_bf16
from starflow.sampling.inverse import JacobiStats
from starflow.sampling.sample import SamplerOptions, sample


def _noise(model, B=2, seed=3):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, c.channel_size, c.img_size, c.img_size, generator=g, dtype=torch.float64)
    y = torch.randn(B, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64)
    y_null = torch.randn(B, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64)
    return z, y, y_null


def test_auto_drafts_only_where_bf16_is_native(make_model, monkeypatch):
    block = make_model().deep
    monkeypatch.setattr(draft_mod, "fast_bf16", lambda device: False)
    assert draft_copy(block, "auto") is None and draft_copy(block, "bf16") is not None
    monkeypatch.setattr(draft_mod, "fast_bf16", lambda device: True)
    auto, bf16 = draft_copy(block, "auto"), draft_copy(block, "bf16")
    assert auto.proj_in.weight.dtype == bf16.proj_in.weight.dtype == torch.bfloat16
    assert isinstance(fast_bf16(torch.device("cpu")), bool) and not fast_bf16(torch.device("meta"))


def test_draft_copy_is_made_per_call_and_follows_the_weights(make_model):
    block = make_model().deep
    before = dict(block.__dict__)
    low = draft_copy(block, "bf16")
    assert low.proj_in.weight.dtype == torch.bfloat16 and not low.proj_in.weight.requires_grad
    assert block.__dict__.keys() == before.keys()                # nothing hidden on the block
    with torch.no_grad():
        block.proj_in.weight.add_(1.0)                           # e.g. an optimiser step
    again = draft_copy(block, "bf16")
    torch.testing.assert_close(again.proj_in.weight.float(), block.proj_in.weight.float().to(torch.bfloat16).float())
    assert draft_copy(block, "none") is None
    assert draft_copy(make_model(dtype=torch.bfloat16).deep, "bf16") is None   # nothing cheaper to draft in
    with pytest.raises(ValueError, match="jacobi draft"):
        draft_copy(block, "fp8")
    with pytest.raises(ValueError, match="jacobi_draft"):
        SamplerOptions(jacobi_draft="fp8")


@pytest.mark.parametrize("schedule", ["sliding", "official"])
def test_draft_result_is_accepted_in_full_precision(make_model, schedule):
    # the bf16 draft is only a starting point: with a tight threshold the result is the float64 fixed
    # point (the sequential sample), far closer than a bf16 solve could be
    model = make_model()
    z, y, y_null = _noise(model)
    seq = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    low = sample(make_model(dtype=torch.bfloat16), z, y, y_null, method="sequential", guidance=2.0)
    assert (low.double() - seq).abs().max() > 1e-3
    stats = JacobiStats()
    out = sample(model, z, y, y_null, method="jacobi", guidance=2.0, jacobi_schedule=schedule, jacobi_draft="bf16",
                 jacobi_block_size=4, jacobi_th=1e-20, jacobi_max_iter=40, stats=stats)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, seq, atol=1e-9, rtol=0)
    assert stats.draft_iterations > 0 and stats.draft_tokens >= 16 * 3


def test_good_draft_is_verified_in_one_pass_per_block(make_model):
    model = make_model()
    z, y, y_null = _noise(model)
    seq = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    plain, drafted = JacobiStats(), JacobiStats()
    opts = dict(method="jacobi", guidance=2.0, jacobi_schedule="sliding", jacobi_block_size=4, jacobi_th=1e-3)
    ref = sample(model, z, y, y_null, stats=plain, **opts)
    out = sample(model, z, y, y_null, jacobi_draft="bf16", stats=drafted, **opts)
    # every token settled in the one float64 pass over the draft: one trunk call of 16 tokens per block
    assert (drafted.iterations, drafted.tokens) == (3, 3 * 16)
    assert drafted.iterations < plain.iterations
    # as accurate as plain Jacobi at this threshold: both stop somewhere within the tolerance, at different
    # points (over six seeds the verified draft's error was 0.3-2.6x plain Jacobi's, lower on average)
    assert (out - seq).abs().max() <= 2 * (ref - seq).abs().max()


def test_draft_with_video_prefix_and_attention_window(make_model):
    model = make_model(temporal_causal=1, shallow_block_local=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    z = model(x, y).z
    out = sample(model, z, y, prefix=x[:, :1], jacobi_draft="bf16", jacobi_block_size=2, jacobi_th=1e-20,
                 jacobi_max_iter=40)
    assert torch.equal(out[:, :1], x[:, :1])
    torch.testing.assert_close(out, x, atol=1e-9, rtol=0)
    # long video: the draft and the check use the same attention window
    model = make_model(temporal_causal=1, shallow_block_local=True, local_attn_window=2)
    zz = torch.randn(1, 5, 2, 4, 4, generator=g, dtype=torch.float64)
    yy = y[:1]
    opts = dict(method="jacobi", guidance=0.0, jacobi_block_size=4, jacobi_th=1e-20, jacobi_max_iter=40,
                context_length=1)
    torch.testing.assert_close(sample(model, zz, yy, jacobi_draft="bf16", **opts), sample(model, zz, yy, **opts),
                               atol=1e-9, rtol=0)


@pytest.mark.gpu
def test_draft_on_cuda_is_accepted_in_float32(make_model):
    model = make_model(dtype=torch.float32).cuda()
    z, y, y_null = (t.float().cuda() for t in _noise(model))
    seq = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    stats = JacobiStats()
    out = sample(model, z, y, y_null, method="jacobi", guidance=2.0, jacobi_schedule="sliding", jacobi_draft="auto",
                 jacobi_block_size=4, jacobi_th=1e-12, jacobi_max_iter=40, stats=stats)
    assert stats.draft_iterations > 0                      # auto drafts on a GPU with bf16
    torch.testing.assert_close(out, seq, atol=1e-4, rtol=1e-4)


def test_native_bf16_covers_the_draft_hardware_and_avx512_bf16(monkeypatch):
    """native_bf16 (compute a bf16 model as stored) is true wherever fast_bf16 (a draft pays) is, and also on
    CPUs with AVX-512 BF16 only; never on a device without bf16 hardware."""
    assert isinstance(draft_mod.native_bf16(torch.device("cpu")), bool)
    assert not draft_mod.native_bf16(torch.device("meta"))
    monkeypatch.setattr(draft_mod, "fast_bf16", lambda device: True)
    assert draft_mod.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(draft_mod, "fast_bf16", lambda device: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert draft_mod.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not draft_mod.native_bf16(torch.device("cpu"))
