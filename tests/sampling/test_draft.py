import copy

import pytest
import torch

from starflow.sampling import draft as draft_mod
from starflow.sampling.draft import draft_copy, fast_bf16
from starflow.sampling.jacobi import JacobiStats
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


def test_draft_copy_is_kept_while_the_block_is_unchanged_and_follows_the_weights(make_model):
    from starflow.nn import weight_cache

    weight_cache.clear()
    block = make_model().deep
    before = dict(block.__dict__)
    low = draft_copy(block, "bf16")
    assert low.proj_in.weight.dtype == torch.bfloat16 and not low.proj_in.weight.requires_grad
    # every tensor as the block's own converted (the copy is made from converted tensors), none shared
    want = copy.deepcopy(block).to(torch.bfloat16).state_dict()
    got = low.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert all(isinstance(p, torch.nn.Parameter) for p in low.parameters())
    assert {p.data_ptr() for p in low.parameters()}.isdisjoint(p.data_ptr() for p in block.parameters())
    assert all(p.dtype == torch.float64 for p in block.parameters())
    assert block.__dict__.keys() == before.keys()                # nothing hidden on the block
    assert draft_copy(block, "bf16") is low                      # kept for the next call (nn.weight_cache)
    with torch.no_grad():
        block.proj_in.weight.add_(1.0)                           # e.g. an optimiser step
    again = draft_copy(block, "bf16")
    assert again is not low
    torch.testing.assert_close(again.proj_in.weight.float(), block.proj_in.weight.float().to(torch.bfloat16).float())
    block.attn_blocks[0].mlp.norm.weight.data.mul_(2.0)         # a write the version counter does not see
    third = draft_copy(block, "bf16")
    assert third is not again
    torch.testing.assert_close(third.attn_blocks[0].mlp.norm.weight.float(),
                               block.attn_blocks[0].mlp.norm.weight.to(torch.bfloat16).float())
    train = draft_copy(block.train(), "bf16")                    # a copy per mode
    assert train.training and train is not third and not draft_copy(block.eval(), "bf16").training
    weight_cache.clear()
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
    plain, tight, drafted = JacobiStats(), JacobiStats(), JacobiStats()
    # plain Jacobi in windows of 4 (jacobi_window: the default widens them; a draft's checks reach the end anyway)
    opts = dict(method="jacobi", guidance=2.0, jacobi_schedule="sliding", jacobi_block_size=4, jacobi_window=4,
                jacobi_th=1e-3)
    ref = sample(model, z, y, y_null, stats=plain, **opts)
    # a draft solved down to the sampler's own threshold: every token settles in the one float64 pass over it,
    # one trunk call of 16 tokens per block
    out = sample(model, z, y, y_null, jacobi_draft="bf16", jacobi_draft_th=1e-3, stats=tight, **opts)
    assert (tight.iterations, tight.tokens) == (3, 3 * 16)
    assert tight.iterations < plain.iterations
    # as accurate as plain Jacobi at this threshold: both stop somewhere within the tolerance, at different
    # points (over six seeds the verified draft's error was 0.3-2.6x plain Jacobi's, lower on average)
    assert (out - seq).abs().max() <= 2 * (ref - seq).abs().max()
    # the default draft stops at 3x the threshold: fewer low-precision calls, and the check still settles
    # within a second pass per block (each over the rest of the block, not windows of 4)
    assert SamplerOptions(jacobi_th=1e-3).draft_th == pytest.approx(3e-3)
    out = sample(model, z, y, y_null, jacobi_draft="bf16", stats=drafted, **opts)
    assert drafted.draft_iterations < tight.draft_iterations
    assert drafted.iterations <= 2 * 3 and drafted.tokens <= 2 * 3 * 16
    assert (out - seq).abs().max() <= 2 * (ref - seq).abs().max()


def test_over_a_draft_every_window_reaches_the_end(make_model, monkeypatch):
    """Drafted tokens after one that fails the check are drafted too, not guesses: each further pass runs from the
    first unsettled token to the end of the block, whatever the block size (without a draft: windows of it)."""
    from starflow.sampling.inverse import BlockInverse
    from starflow.sampling.jacobi import jacobi_inverse
    model = make_model()
    z, y, _ = _noise(model)
    h = model.patchify(z)
    view = model.block_views(h.shape, y, sampling=True)[-1]
    tokens = view.to_block(h.reshape(z.size(0), -1, h.size(-1)))
    exact = BlockInverse(view, tokens)
    jacobi_inverse(exact, block_size=4, threshold=0.0, max_iter=64)
    calls = []
    monkeypatch.setattr(BlockInverse, "run", lambda self, inp, p, *a, _r=BlockInverse.run: (
        calls.append((p, inp.size(1))), _r(self, inp, p, *a))[1])
    inv = BlockInverse(view, tokens)
    inv.start_from(exact)
    inv.x_full[:, 7] += 0.5      # one drafted token off: the first pass settles x_full[1..6], sets x_full[7] right
    out = jacobi_inverse(inv, block_size=4, threshold=1e-20, max_iter=64, schedule="sliding")
    assert len(calls) > 2 and calls[1][0] == 7    # ... and the next starts from input 7
    assert all(p + n == inv.U for p, n in calls)
    torch.testing.assert_close(out, exact.result(), atol=1e-9, rtol=0)
    calls.clear()
    jacobi_inverse(BlockInverse(view, tokens), block_size=4, threshold=1e-12, max_iter=64, schedule="sliding")
    assert max(n for _, n in calls) == 4


def test_draft_threshold_option_is_checked():
    assert SamplerOptions(jacobi_th=2e-3, jacobi_draft_th=5e-3).draft_th == 5e-3
    assert SamplerOptions(jacobi_th=2e-3).draft_th == pytest.approx(6e-3)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="jacobi_draft_th"):
            SamplerOptions(jacobi_draft_th=bad)


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


def test_a_draft_copy_is_frozen_and_a_sample_reads_each_weight_once(make_model, monkeypatch):
    """The stamps of the kept copies (nn.weight_cache): the draft copy is the library's own (no sums), and within
    one `sample` call each of the model's tensors is summed once although its draft and its packed layers both
    stamp it."""
    from starflow.nn import weight_cache

    weight_cache.clear()
    model = make_model(dtype=torch.float32)                                 # float32: its layers get packed
    z, y, y_null = (t.float() for t in _noise(model))
    opt = SamplerOptions(method="jacobi", guidance=1.5, jacobi_draft="bf16")
    sample(model, z, y, y_null, opt)                                        # makes and keeps the copies
    low = draft_copy(model.deep, "bf16")
    assert all(weight_cache._is_frozen(t) for t in [*low.parameters(), *low.buffers()])
    counts: dict[int, int] = {}
    real = torch.Tensor.sum

    def counting(self, *a, **k):
        counts[self.data_ptr()] = counts.get(self.data_ptr(), 0) + 1
        return real(self, *a, **k)
    monkeypatch.setattr(torch.Tensor, "sum", counting)
    first = sample(model, z, y, y_null, opt)
    weights = {p.data_ptr() for p in model.parameters()}
    assert weights & counts.keys()                                          # the stamps did read the weights
    assert all(counts[p] == 1 for p in weights & counts.keys())
    assert not counts.keys() & {t.data_ptr() for t in low.parameters()}
    monkeypatch.undo()
    torch.testing.assert_close(first, sample(model, z, y, y_null, opt), rtol=0, atol=0)
