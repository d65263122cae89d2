"""inverse(forward(x)) == x for every kind of block, and log-dets against autograd's Jacobian."""
import pytest
import torch

from starflow.sampling.sample import SamplerOptions, sample

# every architecture switch, one at a time, on top of the tiny deep-shallow text model
VARIANTS = {
    "deep_shallow": {},
    "no_sos_exp_r2l": dict(sos=False, use_softplus=False, seq_order="R2L", soft_clip=0.0),
    "cond_all_blocks": dict(cond_top_only=False),
    "learned_positions": dict(rope=False),
    "patch2": dict(patch_size=2, img_size=4),
    "swiglu_rms_qk_post_nobias": dict(use_swiglu=True, norm_type="rms_norm", use_qk_norm=True, use_post_norm=True, use_bias=False),
    "gqa": dict(num_heads=4, num_kv_heads=2),
    "top_block_channels": dict(top_block_channels=72),
    "hf_style_rope": dict(hf_style_rope=True),
    "identity_block": dict(layers_per_block=[0, 1, 2]),
    "unconditional": dict(txt_size=0, txt_dim=0, cond_top_only=False),
    "no_norm": dict(norm_type="none", use_final_norm=False),
}

VIDEO_VARIANTS = {
    "frame_causal_local": dict(temporal_causal=1, shallow_block_local=True),
    "frame_causal_global": dict(temporal_causal=1),
}


def _inputs(model, video=False, B=2, T=3):
    c = model.config
    g = torch.Generator().manual_seed(1)
    shape = (B, T, c.channel_size, c.img_size, c.img_size) if video else (B, c.channel_size, c.img_size, c.img_size)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(B, c.txt_size, c.txt_dim, generator=g, dtype=torch.float64) if c.txt_dim else None
    return x, y


JACOBI_VARIANTS = ["deep_shallow", "no_sos_exp_r2l", "learned_positions", "cond_all_blocks", *sorted(VIDEO_VARIANTS)]
CASES = [(n, "sequential") for n in sorted(VARIANTS) + sorted(VIDEO_VARIANTS)] + [(n, "jacobi") for n in JACOBI_VARIANTS]


@pytest.mark.parametrize("name,method", CASES)
def test_inverse_of_forward_is_identity(make_model, name, method):
    overrides = {**VARIANTS, **VIDEO_VARIANTS}[name]
    model = make_model(**overrides)
    x, y = _inputs(model, video=name in VIDEO_VARIANTS)
    with torch.no_grad():
        z = model(x, y).z
    assert not torch.allclose(z, x, atol=1e-3), "the flow should not be the identity"
    # threshold 0 and max_iter >= chunk makes Jacobi exact; after a video's first frame chunks are 4x the
    # block size and start from the previous frame, which costs one more iteration
    video = name in VIDEO_VARIANTS
    opts = SamplerOptions(method=method, jacobi_block_size=2 if video else 8, jacobi_th=0.0,
                          jacobi_max_iter=9 if video else 8)
    x_rec = sample(model, z, y, options=opts)
    torch.testing.assert_close(x_rec, x, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["deep_shallow", "no_sos_exp_r2l", "learned_positions", "patch2",
                                  "swiglu_rms_qk_post_nobias", "identity_block"])
def test_logdet_matches_autograd_jacobian(make_model, name):
    model = make_model(**{"img_size": 2, **VARIANTS[name]})
    x, y = _inputs(model, B=1)
    out = model(x, y)
    logdet = sum(ld.sum() for ld in out.logdets)
    f = lambda inp: model(inp.view_as(x), y).z.reshape(-1)  # noqa: E731
    J = torch.autograd.functional.jacobian(f, x.reshape(-1))
    sign, expected = torch.linalg.slogdet(J)
    assert sign.item() > 0
    torch.testing.assert_close(logdet, expected, atol=1e-9, rtol=1e-9)


def test_video_logdet_matches_autograd_jacobian(make_model):
    model = make_model(img_size=2, **VIDEO_VARIANTS["frame_causal_local"])
    x, y = _inputs(model, video=True, B=1, T=2)
    logdet = sum(ld.sum() for ld in model(x, y).logdets)
    J = torch.autograd.functional.jacobian(lambda inp: model(inp.view_as(x), y).z.reshape(-1), x.reshape(-1))
    torch.testing.assert_close(logdet, torch.linalg.slogdet(J)[1], atol=1e-9, rtol=1e-9)


def test_block_is_autoregressive_in_its_order(make_model):
    """Changing token t changes the block's output only at tokens >= t in the block's order."""
    model = make_model()
    block = model.blocks[0]
    x, _ = _inputs(model)
    tok = x.flatten(2).transpose(1, 2)                  # (B, N, C)
    rope = model.rope_tables(block, 4, 4, 0, None)
    z0, _ = block(tok, None, rope)
    t = 5
    tok2 = tok.clone()
    tok2[:, t] += 1.0
    z1, _ = block(tok2, None, rope)
    order = torch.arange(16)
    if block.order == "flip":
        order = order.flip(0)
    pos_t = (order == t).nonzero().item()
    changed = (z1 - z0).abs().amax(dim=(0, 2)) > 0       # per token in raster order
    for raster in range(16):
        pos = (order == raster).nonzero().item()
        assert bool(changed[raster]) == (pos >= pos_t), (raster, pos, pos_t)
