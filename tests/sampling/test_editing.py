"""Inversion to the flow's noise, inpainting and the noise edit, on tiny random models (float64)."""
import pytest
import torch

from starflow.sampling.editing import edit_noise, encode, exact_prefix_tokens, inpaint
from starflow.sampling.sample import SamplerOptions, sample

EXACT = SamplerOptions(method="sequential")


def _data(model, B=2, T=None, seed=0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (B, c.channel_size, c.img_size, c.img_size) if T is None else (B, T, c.channel_size, c.img_size,
                                                                            c.img_size)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(B, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64)
    return x, y, torch.randn(y.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("overrides, T", [({}, None), (dict(cond_top_only=False, sos=False), None),
                                          (dict(temporal_causal=1, shallow_block_local=True), 3)])
def test_encode_is_the_exact_inverse_of_the_guided_sampler(make_model, overrides, T):
    model = make_model(**overrides)
    x, y, y_null = _data(model, T=T)
    z = encode(model, x, y, y_null, guidance=1.5)
    torch.testing.assert_close(sample(model, z, y, y_null, EXACT.with_(guidance=1.5)), x, atol=1e-9, rtol=0)
    z0 = encode(model, x, y)                       # without guidance: the likelihood pass's own z
    torch.testing.assert_close(z0, model(x, y).z, atol=1e-12, rtol=0)


def test_edit_noise_keeps_a_standard_normal_and_its_mask():
    z = torch.randn(4000, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(edit_noise(z, 0.0), z)
    moved = edit_noise(z, 0.5, torch.Generator().manual_seed(1))
    assert abs(float(moved.std()) - 1) < 0.02 and 0.6 < float((moved * z).mean()) < 0.8   # cos(pi / 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 2:, :] = True
    part = edit_noise(z, 1.0, torch.Generator().manual_seed(1), mask)
    assert torch.equal(part[..., :2, :], z[..., :2, :]) and not torch.equal(part[..., 2:, :], z[..., 2:, :])
    with pytest.raises(ValueError, match="strength"):
        edit_noise(z, 1.5)


def test_inpainting_keeps_the_known_part_and_handles_empty_and_full_masks(make_model):
    model = make_model()
    x, y, y_null = _data(model)
    opts = SamplerOptions(guidance=1.0, jacobi_block_size=4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[2:] = True                                                      # the lower half
    out = inpaint(model, x, mask, y, y_null, opts, iterations=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., :2, :], x[..., :2, :]) and not torch.allclose(out[..., 2:, :], x[..., 2:, :])
    assert torch.isfinite(out).all()
    assert torch.equal(inpaint(model, x, torch.zeros(4, 4, dtype=torch.bool), y, y_null, opts), x)
    full = inpaint(model, x, torch.ones(4, 4, dtype=torch.bool), y, y_null, opts,
                   generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32).to(x)
    torch.testing.assert_close(full, sample(model, noise, y, y_null, opts), atol=0, rtol=0)
    with pytest.raises(ValueError, match="does not fit"):
        inpaint(model, x, torch.zeros(3, 4, dtype=torch.bool), y, y_null, opts)
    with pytest.raises(ValueError, match="boolean"):
        inpaint(model, x, torch.zeros(4, 4), y, y_null, opts)
    with pytest.raises(ValueError, match="method"):
        inpaint(model, x, mask, y, y_null, opts, method="magic")


def test_the_exact_path_is_image_to_video_for_known_first_frames(make_model):
    model = make_model(temporal_causal=1, shallow_block_local=True)
    x, y, y_null = _data(model, T=4)
    mask = torch.zeros(4, 4, 4, dtype=torch.bool)
    mask[2:] = True                                                      # frames 2 and 3 are made
    assert exact_prefix_tokens(model, mask[None, :, None]) == 2 * 16
    opts = SamplerOptions(guidance=1.0)
    out = inpaint(model, x, mask, y, y_null, opts, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float32).to(x)
    torch.testing.assert_close(out, sample(model, noise, y, y_null, opts, prefix=x[:, :2]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="prefix of the deep block"):
        inpaint(model, x, mask.flip(0), y, y_null, opts, method="exact")      # known last frames: not exact


def test_exact_prefixes_of_images_need_a_model_without_shallow_blocks(make_model):
    lower = torch.zeros(1, 1, 1, 4, 4, dtype=torch.bool)[0]
    lower[..., 2:, :] = True
    assert exact_prefix_tokens(make_model(), lower) is None             # a flipped shallow block mixes them
    single = make_model(blocks=1, layers_per_block=[2], seq_order="R2L")   # one block, identity order
    assert exact_prefix_tokens(single, lower) == 8                      # the upper half: the first 8 tokens
    x, y, y_null = _data(single)
    opts = SamplerOptions(guidance=1.0, method="sequential")
    out = inpaint(single, x, lower[0, 0], y, y_null, opts, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[..., :2, :], x[..., :2, :])
    # the exact conditional in one pass: the lower half's noise is exactly the noise drawn for it (the
    # resampling rounds would have moved it), given the known upper half
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float32).to(x)
    z = encode(single, out, y, y_null, 1.0)
    torch.testing.assert_close(z[..., 2:, :], noise[..., 2:, :], atol=1e-9, rtol=0)
