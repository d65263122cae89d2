"""Bits/dim of a picture through a pipeline: the exact NLL of the mapped input, in pixels or latents."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from starflow.flow.likelihood import nll
from starflow.pipelines import StarFlowPipeline
from starflow.pipelines.likelihood import expected_image_size, image_likelihood
from starflow.flow.transforms import LogitTransform


def _grey(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8))


def _x(img):                                         # the documented mapping: v / 127.5 - 1
    return torch.from_numpy(np.asarray(img, dtype=np.float32))[None, None] / 127.5 - 1


@pytest.fixture
def grey_pipe(flow_factory, labels):
    """Pixel space, one channel, 4x4 pictures."""
    return StarFlowPipeline(flow_factory(channel_size=1), labels, None, autoencoder_spec="identity")


def test_pixel_bits_per_dim_is_the_flows_nll(grey_pipe, labels):
    img = _grey(4, 4)
    r = image_likelihood(grey_pipe, img, "3")
    x = _x(img)
    want = nll(grey_pipe.flow, x, labels.encode(["3"])).item()
    assert r.space == "pixels" and r.num_dims == 16 and r.size == (4, 4)
    assert r.nll_nats == pytest.approx(want, rel=1e-5)
    assert r.bits_per_dim == pytest.approx(want / (16 * math.log(2)), rel=1e-5)
    # per 8-bit value: dx/dv = 2/255, so log2(127.5) more bits per value
    assert r.bits_per_dim_8bit == pytest.approx(r.bits_per_dim + math.log2(127.5), rel=1e-6)
    uncond = nll(grey_pipe.flow, x, labels.null(1)).item() / (16 * math.log(2))
    assert r.bits_per_dim_unconditional == pytest.approx(uncond, rel=1e-5)
    assert r.bits_per_dim != pytest.approx(image_likelihood(grey_pipe, img, "7").bits_per_dim, rel=1e-4)
    alone = image_likelihood(grey_pipe, img)                          # no prompt: the empty prompt only
    assert alone.bits_per_dim == pytest.approx(uncond, rel=1e-5) and alone.bits_per_dim_unconditional is None


def test_input_transform_counts_its_log_jacobian(grey_pipe, labels):
    img = _grey(4, 4, seed=1)
    grey_pipe.input_transform = tr = LogitTransform(0.05)
    t, logdet = tr.forward(_x(img))
    want = nll(grey_pipe.flow, t, labels.encode(["2"])).double().item() - logdet.item()
    r = image_likelihood(grey_pipe, img, "2")
    assert r.nll_nats == pytest.approx(want, rel=1e-5) and "logit input transform" in r.mapping


def test_latent_bits_per_dim_use_the_posterior_mean(latent_image_pipe, labels):
    img = _grey(8, 8, seed=2)
    r = image_likelihood(latent_image_pipe, img, "1")
    z = latent_image_pipe.autoencoder.encode(_x(img), sample=False)
    D = z[0].numel()
    assert r.space == "latents" and r.num_dims == D == 2 * 4 * 4 and r.bits_per_dim_8bit is None
    want = nll(latent_image_pipe.flow, z, labels.encode(["1"])).item() / (D * math.log(2))
    assert r.bits_per_dim == pytest.approx(want, rel=1e-5)


def test_video_pipeline_scores_a_one_frame_video(video_pipe, labels):
    img = _grey(8, 8, seed=3)
    r = image_likelihood(video_pipe, img, "4")
    z = video_pipe.autoencoder.encode(_x(img)[:, None], sample=False)             # (1, 1, c, h, w)
    want = nll(video_pipe.flow, z, labels.encode(["4"])).item() / (z[0].numel() * math.log(2))
    assert r.input_shape == tuple(z.shape[1:]) and r.bits_per_dim == pytest.approx(want, rel=1e-5)
    assert "one-frame video" in r.mapping


def test_sizes_colours_and_prompts(grey_pipe, flow_factory, labels):
    assert expected_image_size(grey_pipe) == (4, 4)
    with pytest.raises(ValueError, match=r"the image is 8x8 pixels; this model scores 4x4 images"):
        image_likelihood(grey_pipe, _grey(8, 8))
    big = _grey(8, 8)
    resized = image_likelihood(grey_pipe, big, "3", resize=True)
    assert resized.bits_per_dim == pytest.approx(
        image_likelihood(grey_pipe, big.resize((4, 4), Image.BILINEAR), "3").bits_per_dim, rel=1e-6)
    rgb = Image.merge("RGB", [_grey(4, 4)] * 3)                       # grey in RGB: the same picture
    r = image_likelihood(grey_pipe, rgb, "3")
    assert "converted from RGB to L" in r.mapping
    assert r.bits_per_dim == pytest.approx(image_likelihood(grey_pipe, _grey(4, 4), "3").bits_per_dim, rel=1e-6)
    uncond = StarFlowPipeline(flow_factory(channel_size=1, txt_size=0, txt_dim=0, cond_top_only=False), None, None,
                              autoencoder_spec="identity")
    with pytest.raises(ValueError, match="unconditional: it takes no prompt"):
        image_likelihood(uncond, _grey(4, 4), "3")
    assert math.isfinite(image_likelihood(uncond, _grey(4, 4)).bits_per_dim)
    with pytest.raises(ValueError, match="2 channels"):
        image_likelihood(StarFlowPipeline(flow_factory(), labels, None, autoencoder_spec="identity"), _grey(4, 4))


def test_other_aspect_ratios_with_rotary_positions(grey_pipe, flow_factory, labels):
    # 4x4 target, multiple 1: 16:9 -> 3x5 keeps the area; learned positions refuse it
    r = image_likelihood(grey_pipe, _grey(3, 5), None)
    assert r.size == (3, 5) and r.num_dims == 15
    learned = StarFlowPipeline(flow_factory(channel_size=1, rope=False), labels, None, autoencoder_spec="identity")
    with pytest.raises(ValueError, match="this model scores 4x4 images: resize"):
        image_likelihood(learned, _grey(3, 5))
