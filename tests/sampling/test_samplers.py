import warnings

import pytest
import torch

from starflow.flow.affine import guide
from starflow.sampling.denoise import score_denoise
from starflow.sampling.jacobi import JacobiStats
from starflow.sampling.sample import NonFiniteSampleWarning, SamplerOptions, sample


def _noise(model, B=2, T=None, seed=3):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (B, c.channel_size, c.img_size, c.img_size) if T is None else (B, T, c.channel_size, c.img_size, c.img_size)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(B, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64)
    y_null = torch.randn(B, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64)
    return z, y, y_null


@pytest.mark.parametrize("overrides", [{}, dict(cond_top_only=False, sos=False, use_softplus=False)])
def test_exact_jacobi_equals_sequential_with_guidance(make_model, overrides):
    model = make_model(**overrides)
    z, y, y_null = _noise(model)
    seq = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    jac = sample(model, z, y, y_null, method="jacobi", guidance=2.0, jacobi_block_size=4, jacobi_th=0.0,
                 jacobi_max_iter=4)
    torch.testing.assert_close(jac, seq, atol=1e-10, rtol=0)


def test_jacobi_threshold_stops_early_and_stays_close(make_model):
    model = make_model()
    z, y, y_null = _noise(model)
    exact = sample(model, z, y, y_null, method="sequential", guidance=1.0)
    fast_stats, slow_stats = JacobiStats(), JacobiStats()
    fast = sample(model, z, y, y_null, method="jacobi", guidance=1.0, jacobi_block_size=16, jacobi_th=1e-4,
                  jacobi_max_iter=16, stats=fast_stats)
    sample(model, z, y, y_null, method="jacobi", guidance=1.0, jacobi_block_size=16, jacobi_th=0.0,
           jacobi_max_iter=16, stats=slow_stats)
    assert fast_stats.iterations < slow_stats.iterations
    assert (fast - exact).abs().max() < 0.05


def test_cached_trunk_equals_uncached(make_model):
    model = make_model()
    block = model.deep
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    rope = model.rope_tables(block, 4, 4, 0, y)
    full = block.run(x, y, rope=rope)
    cache = block.new_cache(2, 3 + 16, dtype=torch.float64)
    block.run(None, y, rope=rope, cache=cache)
    steps = [block.run(x[:, :5], None, rope=rope, cache=cache)]            # a chunk, then single tokens
    steps += [block.run(x[:, t:t + 1], None, rope=rope, cache=cache) for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-12, rtol=0)
    assert cache.pos == 19


def test_guidance_zero_and_equal_branches_are_unguided(make_model):
    model = make_model()
    z, y, y_null = _noise(model)
    plain = sample(model, z, y, method="sequential")
    torch.testing.assert_close(sample(model, z, y, y_null, method="sequential", guidance=0.0), plain)
    # with identical branches the guided Gaussian is the conditional one, whatever the weight
    torch.testing.assert_close(sample(model, z, y, y.clone(), method="sequential", guidance=3.0), plain,
                               atol=1e-10, rtol=0)
    assert not torch.allclose(sample(model, z, y, y_null, method="sequential", guidance=3.0), plain, atol=1e-4)


def test_guide_formula():
    s_c, s_u = torch.tensor([[0.5], [2.0]]), torch.tensor([[1.0], [1.0]])
    m_c, m_u = torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [3.0]])
    scale, shift = guide(torch.cat([s_c, s_u]), torch.cat([m_c, m_u]), 1.0)
    # first row: s = 0.25 -> denom 1.75; second row: ratio clipped to 1 -> denom 1
    torch.testing.assert_close(scale[:2], torch.tensor([[0.5 / 1.75 ** 0.5], [2.0]]))
    torch.testing.assert_close(shift[:2], torch.tensor([[2.0 / 1.75], [2.0 - 3.0]]))
    torch.testing.assert_close(scale[2:], scale[:2])


def test_attention_temperature_and_annealing_options(make_model):
    model = make_model()
    z, y, y_null = _noise(model)
    base = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    torch.testing.assert_close(sample(model, z, y, y_null, method="sequential", guidance=2.0, attn_temp=1.0), base)
    assert not torch.allclose(sample(model, z, y, y_null, method="sequential", guidance=2.0, attn_temp=0.5), base)
    annealed = sample(model, z, y, y_null, method="sequential", guidance=2.0, annealed_guidance=True)
    assert not torch.allclose(annealed, base)


@pytest.mark.parametrize("method", ["sequential", "jacobi"])
def test_image_to_video_prefix_is_kept_and_consistent(make_model, method):
    model = make_model(temporal_causal=1, shallow_block_local=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    z = model(x, y).z
    # the first frame given as a prefix: the rest of the exact inverse must still recover x
    out = sample(model, z, y, method=method, prefix=x[:, :1], jacobi_block_size=2, jacobi_th=0.0, jacobi_max_iter=9)
    assert torch.equal(out[:, :1], x[:, :1])
    torch.testing.assert_close(out, x, atol=1e-9, rtol=0)


def test_long_video_sliding_window(make_model):
    model = make_model(temporal_causal=1, shallow_block_local=True, local_attn_window=2)
    z, y, y_null = _noise(model, B=1, T=5)
    opts = dict(method="jacobi", guidance=1.0, jacobi_block_size=4, jacobi_th=0.0, jacobi_max_iter=17)
    out = sample(model, z, y, y_null, context_length=1, **opts)
    assert out.shape == z.shape and torch.isfinite(out).all()
    # within the window the sliding sampler is the plain one
    short = z[:, :2]
    plain = make_model(temporal_causal=1, shallow_block_local=True)
    torch.testing.assert_close(sample(model, short, y, y_null, context_length=1, **opts),
                               sample(plain, short, y, y_null, **opts))
    with pytest.raises(ValueError, match="context_length"):
        sample(model, z, y, y_null, context_length=None, **opts)


def test_sliding_jacobi_schedule_without_early_stop_is_exact(make_model):
    # threshold 0: the window only ever keeps its exact first token, so the result is the sequential one
    model = make_model()
    z, y, y_null = _noise(model)
    seq = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    stats = JacobiStats()
    jac = sample(model, z, y, y_null, method="jacobi", jacobi_schedule="sliding", guidance=2.0, jacobi_block_size=4,
                 jacobi_th=0.0, jacobi_max_iter=100, stats=stats)
    torch.testing.assert_close(jac, seq, atol=1e-10, rtol=0)
    assert stats.iterations == 16 * 3   # one token settled per trunk call, in each of 3 blocks
    with pytest.raises(ValueError, match="jacobi_schedule"):
        SamplerOptions(jacobi_schedule="gauss-seidel")


def test_overflowing_samples_warn_and_leave_the_others(make_model):
    # a sample whose inverse overflows (here: noise far out in the tail) comes out NaN / inf with a warning;
    # the batch's other samples are what they would be alone, and the denoisers pass it through untouched
    model = make_model(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 2, 4, 4, generator=g)
    y = torch.randn(3, 3, 5, generator=g)
    z[1] *= 3e37
    with pytest.warns(NonFiniteSampleWarning, match="1 of 3 samples"):
        x = sample(model, z, y, method="sequential")
    assert not torch.isfinite(x[1]).all() and torch.isfinite(x[[0, 2]]).all()
    torch.testing.assert_close(x[[0, 2]], sample(model, z[[0, 2]], y[[0, 2]], method="sequential"))
    d = score_denoise(model, x, y, 0.3)
    torch.testing.assert_close(d[[0, 2]], score_denoise(model, x[[0, 2]], y[[0, 2]], 0.3))
    torch.testing.assert_close(d[1], x[1], rtol=0, atol=0, equal_nan=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # finite samples: no warning
        sample(model, z[[0, 2]], y[[0, 2]], method="sequential")


def _windowed_reference(view, tokens: torch.Tensor, window: int, context: int) -> torch.Tensor:
    """The deep block's inverse with a sliding attention window, without any cache: every token is solved
    from one full trunk call on the sequence it sees, [sos, the last `context` frames..., itself] re-started
    at position 0 whenever the window slides (as the official long-video sampler re-encodes its context)."""
    from starflow.flow.affine import inverse_affine

    block, F = view.block, tokens.size(1) // view.frames
    zp = block.permute(tokens, view.frames)
    x_full = block.input_sequence(zp).clone()
    U, W, C = x_full.size(1) - 1, window * F, context * F
    pos = block.positions_embed(zp.size(1), view.frames)
    begin, target = 0, min(W, U)                         # where the current fresh sequence starts
    for p in range(U):
        if p >= target:                                  # the window is full: slide it
            begin, target = p + 1 - C, min(target + W - C, U)
        seq = x_full[:, :p + 1] if begin == 0 else torch.cat([x_full[:, :1], x_full[:, begin:p + 1]], 1)
        raw = block.run(seq, view.text, rope=view.rope, pos_embed=None if pos is None else pos[:seq.size(1)])
        scale, shift = block.params(raw[:, -1:])
        x_full[:, p + 1:p + 2] = inverse_affine(zp[:, p:p + 1], scale, shift)
    return block.permute(x_full[:, 1:], view.frames)


@pytest.mark.parametrize("rope", [True, False])
def test_windowed_jacobi_equals_the_uncached_reference(make_model, rope):
    """Past its attention window the deep block re-encodes its context: with learned positions (rope=False)
    the re-encoded tokens need their positions too, as every other trunk call has them."""
    from starflow.sampling.inverse import BlockInverse
    from starflow.sampling.jacobi import jacobi_inverse

    model = make_model(temporal_causal=1, shallow_block_local=True, rope=rope)
    z, y, _ = _noise(model, B=2, T=5)
    tokens = model.patchify(z).reshape(2, -1, model.config.token_channels)
    view = model.block_views(model.patchify(z).shape, y, sampling=True)[-1]
    ref = _windowed_reference(view, tokens, window=2, context=1)
    inv = BlockInverse(view, tokens, window_frames=2)
    got = jacobi_inverse(inv, block_size=4, threshold=0.0, max_iter=64, context_frames=1, window_frames=2)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    # and the window matters: the full-attention inverse differs past the first window
    full = jacobi_inverse(BlockInverse(view, tokens), block_size=4, threshold=0.0, max_iter=64)
    assert (full - ref).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["jacobi", "sequential"])
def test_sliding_keeps_the_text_entries_and_encodes_the_text_once(make_model, method, monkeypatch):
    """A slide rewinds the cache to the text instead of re-encoding the text (its keys would be the same): the
    text goes through the trunk once per inverse, however often the window slides, and the video is the one
    the uncached reference makes (the reference re-reads the text in every call)."""
    from starflow.sampling.inverse import BlockInverse
    from starflow.sampling.jacobi import jacobi_inverse
    from starflow.sampling.sequential import sequential_inverse

    model = make_model(temporal_causal=1, shallow_block_local=True)
    z, y, _ = _noise(model, B=2, T=5)
    tokens = model.patchify(z).reshape(2, -1, model.config.token_channels)
    view = model.block_views(model.patchify(z).shape, y, sampling=True)[-1]
    ref = _windowed_reference(view, tokens, window=2, context=1)
    text_calls, slides, run = [], [], type(view.block).run

    def spy(self, x, text=None, **kw):
        if text is not None:
            text_calls.append(text.shape)
        return run(self, x, text, **kw)
    monkeypatch.setattr(type(view.block), "run", spy)
    monkeypatch.setattr(BlockInverse, "slide", lambda self, *a, _s=BlockInverse.slide: (slides.append(a), _s(self, *a)))
    inv = BlockInverse(view, tokens, window_frames=2)
    if method == "jacobi":
        got = jacobi_inverse(inv, block_size=4, threshold=0.0, max_iter=64, context_frames=1, window_frames=2)
    else:
        got = sequential_inverse(inv, context_frames=1, window_frames=2)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    assert len(slides) == 3 and len(text_calls) == 1


@pytest.mark.parametrize("rope", [True, False])
def test_windowed_sequential_equals_the_uncached_reference(make_model, rope):
    """The sequential sampler slides the same window: it solves the equations Jacobi solves, token by token."""
    from starflow.sampling.inverse import BlockInverse
    from starflow.sampling.sequential import sequential_inverse

    model = make_model(temporal_causal=1, shallow_block_local=True, rope=rope)
    z, y, _ = _noise(model, B=2, T=5)
    tokens = model.patchify(z).reshape(2, -1, model.config.token_channels)
    view = model.block_views(model.patchify(z).shape, y, sampling=True)[-1]
    ref = _windowed_reference(view, tokens, window=2, context=1)
    got = sequential_inverse(BlockInverse(view, tokens, window_frames=2), context_frames=1, window_frames=2)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="context_length"):
        sequential_inverse(BlockInverse(view, tokens, window_frames=2), context_frames=2, window_frames=2)


def test_long_video_samplers_agree(make_model):
    # the whole model past its window, guided, with an image-to-video prefix: Jacobi without early stop
    # and the sequential sampler give the same video
    model = make_model(temporal_causal=1, shallow_block_local=True, local_attn_window=2)
    z, y, y_null = _noise(model, B=2, T=5)
    opts = dict(guidance=1.5, context_length=1)
    seq = sample(model, z, y, y_null, method="sequential", **opts)
    jac = sample(model, z, y, y_null, method="jacobi", jacobi_block_size=4, jacobi_th=0.0, jacobi_max_iter=64, **opts)
    torch.testing.assert_close(jac, seq, atol=1e-10, rtol=0)
    prefix = torch.randn(2, 1, *z.shape[2:], dtype=z.dtype, generator=torch.Generator().manual_seed(5))
    seq = sample(model, z, y, y_null, method="sequential", prefix=prefix, **opts)
    jac = sample(model, z, y, y_null, method="jacobi", jacobi_block_size=4, jacobi_th=0.0, jacobi_max_iter=64,
                 prefix=prefix, **opts)
    torch.testing.assert_close(jac, seq, atol=1e-10, rtol=0)
    assert torch.equal(seq[:, :1], prefix)
    # the window matters for the sequential sampler too: full attention gives another video
    full = sample(make_model(temporal_causal=1, shallow_block_local=True), z, y, y_null, method="sequential",
                  guidance=1.5)
    assert (full - sample(model, z, y, y_null, method="sequential", **opts)).abs().max() > 1e-3


def test_sampling_never_writes_the_model_config(make_model):
    model = make_model(temporal_causal=1, shallow_block_local=True)
    before = model.config.to_dict()
    z, y, y_null = _noise(model, T=5)
    sample(model, z, y, y_null, guidance=1.0, attn_window=2, context_length=1)
    assert model.config.to_dict() == before and model.config.local_attn_window is None


@pytest.mark.parametrize("sos", [True, False])
def test_past_the_window_a_video_continues_from_its_last_context_frames(make_model, sos):
    """After the window slides, the new frames are what the model makes from the last `context_length` frames
    alone (re-encoded as the start of a video): the same as sampling them with those frames as a known prefix.
    Without a SOS embedding the first token is the sequence's own: windows must still end on frame borders."""
    model = make_model(temporal_causal=1, shallow_block_local=True, sos=sos)
    z, y, y_null = _noise(model, T=6)
    exact = dict(method="jacobi", jacobi_th=0.0, jacobi_max_iter=200)
    win = sample(model, z, y, y_null, guidance=1.0, attn_window=4, context_length=2, **exact)
    torch.testing.assert_close(win[:, :4], sample(model, z[:, :4], y, y_null, guidance=1.0, **exact))
    cont = sample(model, z[:, 2:], y, y_null, guidance=1.0, method="sequential", prefix=win[:, 2:4])
    torch.testing.assert_close(win[:, 4:], cont[:, 2:], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("method", ["jacobi", "sequential"])
def test_float32_sampling_packs_the_linear_weights_and_changes_only_rounding(make_model, method, monkeypatch):
    """On a CPU the sampler multiplies from weights packed once per call (nn.packed); the sample is the
    one of plain Linear layers up to float rounding, and the layers are plain again afterwards."""
    import starflow.nn.packed as packed
    import starflow.sampling.sample as sampler
    if not packed.packing_available():
        pytest.skip("this torch build has no oneDNN")
    model = make_model().float()
    z, y, y_null = (t.float() for t in _noise(model))
    counts = []
    real = sampler.packed_linears

    def counting(module, enabled=True):
        ctx = real(module, enabled)

        class Spy:
            def __enter__(self):
                counts.append(ctx.__enter__())
                return counts[-1]

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)
        return Spy()
    monkeypatch.setattr(sampler, "packed_linears", counting)
    opts = dict(method=method, guidance=2.0, jacobi_block_size=4, jacobi_th=0.0, jacobi_max_iter=16)
    got = sample(model, z, y, y_null, **opts)
    assert counts and all(n > 0 for n in counts)          # every block's layers were packed
    assert not any("forward" in m.__dict__ for m in model.modules())
    monkeypatch.setattr(packed, "packing_available", lambda: False)
    want = sample(model, z, y, y_null, **opts)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", [True, False])
@torch.no_grad()
def test_a_slid_context_is_encoded_in_the_next_trunk_call(make_model, rope, monkeypatch):
    """slide() leaves the re-encoding to the next run(): one trunk call over [context; inputs] returning the inputs'
    outputs, the same numbers and cache as encoding the context first (flush); a run that does not continue the
    context (or with another attention temperature) encodes it first."""
    from starflow.sampling.inverse import BlockInverse

    model = make_model(temporal_causal=1, shallow_block_local=True, rope=rope)
    z, y, _ = _noise(model, B=2, T=5)
    tokens = model.patchify(z).reshape(2, -1, model.config.token_channels)
    view = model.block_views(model.patchify(z).shape, y, sampling=True)[-1]
    merged, flushed = (BlockInverse(view, tokens, window_frames=3) for _ in range(2))
    F = merged.frame_tokens
    target = 3 * F - 1 + merged.off
    for s in (merged, flushed):
        s.run(s.x_full[:, :target], 0)
        s.slide(target, 2 * F)
    calls, run = [], type(view.block).run
    monkeypatch.setattr(type(view.block), "run",
                        lambda self, x, text=None, **kw: (calls.append((x.size(1), kw.get("outputs"))),
                                                          run(self, x, text, **kw))[1])
    got = merged.run(merged.x_full[:, target:target + F], target)
    assert calls == [(2 * F + F, F)]
    flushed.flush()
    want = flushed.run(flushed.x_full[:, target:target + F], target)
    assert calls[1:] == [(2 * F, 0), (F, None)]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert merged.cache.pos == flushed.cache.pos and merged.context is None
    torch.testing.assert_close(merged.cache.k[-1][:, :, :merged.cache.pos], flushed.cache.k[-1][:, :, :merged.cache.pos],
                               atol=1e-12, rtol=0)
    # not continuing the context (another position, or attn_temp) encodes it alone first
    for kw in (dict(p=target + 1), dict(p=target, attn_temp=0.5)):
        merged.slide(target, 2 * F)
        calls.clear()
        merged.run(merged.x_full[:, kw["p"]:kw["p"] + 2], kw["p"], kw.get("attn_temp", 1.0))
        assert calls == [(2 * F, 0), (2, None)]
        merged.cache.rewind(2)


@pytest.mark.parametrize("sos", [True, False])
@pytest.mark.parametrize("hf_style_rope", [False, True])
@torch.no_grad()
def test_a_kept_slide_matches_the_reencoded_one_in_positions_and_first_layer(make_model, sos, hf_style_rope):
    """A draft's slide (reencode=False) moves the context's cached entries instead of re-encoding them: the same
    cache length, shift and positions as the re-encoding, and since a first layer's keys and values depend only on
    the token and its position, the same first-layer entries (keys turned to their new rows); deeper layers keep
    what the context saw before (older frames), which is what makes it a draft's approximation."""
    from starflow.sampling.inverse import BlockInverse

    model = make_model(temporal_causal=1, shallow_block_local=True, sos=sos, hf_style_rope=hf_style_rope)
    z, y, _ = _noise(model, B=2, T=5)
    tokens = model.patchify(z).reshape(2, -1, model.config.token_channels)
    view = model.block_views(model.patchify(z).shape, y, sampling=True)[-1]
    kept, fresh = (BlockInverse(view, tokens, window_frames=3) for _ in range(2))
    F = kept.frame_tokens
    target = 3 * F - 1 + kept.off                  # the end of the first window (sampling.inverse.first_target)
    for s in (kept, fresh):
        s.run(s.x_full[:, :target], 0)             # any tokens will do: fill the first window's cache
    run_calls = []
    real = kept.run
    kept.run = lambda *a, **k: (run_calls.append(a[0].shape), real(*a, **k))[1]
    kept.slide(target, 2 * F, reencode=False)
    fresh.slide(target, 2 * F)
    fresh.flush()                                  # its context's keys and values now, not with the next call
    assert run_calls == []                         # no trunk call: the entries moved
    assert (kept.shift, kept.cache.pos) == (fresh.shift, fresh.cache.pos)
    n = kept.cache.pos
    # keys: turned with the float32 RoPE tables (cos^2 + sin^2 is 1 only to ~1e-7 there)
    torch.testing.assert_close(kept.cache.k[0][:, :, :n], fresh.cache.k[0][:, :, :n], atol=1e-6, rtol=0)
    torch.testing.assert_close(kept.cache.v[0][:, :, :n], fresh.cache.v[0][:, :, :n], atol=1e-12, rtol=0)
    # deeper: the context's tokens had attended to the frame the window dropped
    assert (kept.cache.k[1][:, :, :n] - fresh.cache.k[1][:, :, :n]).abs().max() > 1e-3
    # a second slide from the kept state again lands where the re-encoding does
    for s in (kept, fresh):
        s.run(s.x_full[:, target:target + F], target)
    kept.slide(target + F, 2 * F, reencode=False)
    fresh.slide(target + F, 2 * F)
    fresh.flush()
    assert (kept.shift, kept.cache.pos) == (fresh.shift, fresh.cache.pos)
    torch.testing.assert_close(kept.cache.k[0][:, :, :n], fresh.cache.k[0][:, :, :n], atol=2e-6, rtol=0)


@torch.no_grad()
def test_a_video_token_starts_from_the_previous_frames_map_applied_to_its_own_noise(make_model):
    from starflow.flow.affine import inverse_affine
    from starflow.sampling.inverse import BlockInverse
    from starflow.sampling.jacobi import jacobi_inverse

    model = make_model(temporal_causal=1, shallow_block_local=True)
    z, y, _ = _noise(model, B=2, T=3)
    tokens = model.patchify(z).reshape(2, -1, model.config.token_channels)
    view = model.block_views(model.patchify(z).shape, y, sampling=True)[-1]
    inv = BlockInverse(view, tokens)
    F = inv.frame_tokens
    q = torch.arange(F + 1, 2 * F + 1)                       # the second frame
    assert torch.equal(inv.previous_frame_guess(q), inv.x_full[:, q - F])      # no map known yet: the value
    raw = inv.run(inv.x_full[:, :F], 0)                      # the first frame's maps
    inv.solve(raw, 0, inv.guidance)
    scale, shift = view.block.params(raw, inv.guidance)
    want = inverse_affine(inv.zp[:, q - inv.off], scale, shift)
    assert torch.equal(inv.previous_frame_guess(q), want)
    # fewer trunk calls than starting from the previous frame's values, for the same solution
    calls = {}
    for name, guess in (("map", BlockInverse.previous_frame_guess), ("value", lambda self, q: self.x_full[:, q - F])):
        stats = JacobiStats()
        inv = BlockInverse(view, tokens)
        inv.previous_frame_guess = guess.__get__(inv)
        out = jacobi_inverse(inv, block_size=4, threshold=1e-12, max_iter=64, stats=stats, schedule="sliding")
        calls[name], calls[name + "_out"] = stats.iterations, out
    # both stop within the threshold (a relative squared change of 1e-12: ~1e-6 relative)
    torch.testing.assert_close(calls["map_out"], calls["value_out"], atol=1e-5, rtol=0)
    assert calls["map"] < calls["value"], calls


def test_the_sliding_schedule_widens_its_window_by_default(make_model, monkeypatch):
    """jacobi_window 0: about WINDOW_ROWS rows (tokens x sequences) at WINDOW_WIDTH channels, fewer for wider blocks,
    at least jacobi_block_size tokens and at most the block's sequence; a set window is used for every block, and the
    official schedule keeps its chunks."""
    import starflow.sampling.jacobi as J
    from starflow.config import ConfigError
    from starflow.sampling.options import WINDOW_ROWS, WINDOW_WIDTH

    sliding = SamplerOptions(jacobi_schedule="sliding", jacobi_block_size=8)
    assert sliding.jacobi_tokens(10_000, 8, WINDOW_WIDTH) == WINDOW_ROWS // 8
    assert sliding.jacobi_tokens(10_000, 8, 2 * WINDOW_WIDTH) == WINDOW_ROWS // 32      # 4x the cost a row
    assert sliding.jacobi_tokens(10_000, 2, 3072) == 8        # a 3B model's width: the block size, as before
    assert sliding.jacobi_tokens(100, 4, WINDOW_WIDTH) == 100                       # the whole sequence
    assert sliding.jacobi_tokens(10_000, 10_000, WINDOW_WIDTH) == 8                 # never under the block size
    assert sliding.with_(jacobi_window=5).jacobi_tokens(100, 1, 64) == 5
    assert sliding.with_(jacobi_schedule="official", jacobi_window=5).jacobi_tokens(100, 1, 64) == 8
    with pytest.raises(ConfigError, match="jacobi_window"):
        SamplerOptions(jacobi_window=-1)

    seen = []
    for name in ("_sliding_window", "_official_chunks"):
        monkeypatch.setattr(J, name, lambda inv, start, target, size, *a, _f=getattr(J, name), _n=name: (
            seen.append((_n, inv.x_full.size(0), size)), _f(inv, start, target, size, *a))[1])
    model = make_model()
    monkeypatch.setattr("starflow.sampling.options.WINDOW_ROWS", 24)
    monkeypatch.setattr("starflow.sampling.options.WINDOW_WIDTH", model.config.channels)
    z, y, y_null = _noise(model)           # 2 samples; 16 tokens a block
    seq = sample(model, z, y, y_null, method="sequential", guidance=2.0)
    for window, schedule in ((0, "sliding"), (3, "sliding"), (0, "official")):
        seen.clear()
        out = sample(model, z, y, y_null, method="jacobi", guidance=2.0, jacobi_schedule=schedule, jacobi_block_size=2,
                     jacobi_window=window, jacobi_th=0.0, jacobi_max_iter=100)
        torch.testing.assert_close(out, seq, atol=1e-10, rtol=0)   # no early stop: exact whatever the window
        sizes = {(rows, size) for _, rows, size in seen}
        if schedule == "official":
            assert {n for n, _, _ in seen} == {"_official_chunks"} and sizes == {(4, 2), (2, 2)}
        elif window:
            assert sizes == {(4, 3), (2, 3)}
        else:                                   # 24 rows: 6 tokens of the guided deep block (4 sequences), 12 of 2
            assert sizes == {(4, 6), (2, 12)}
