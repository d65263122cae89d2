import numpy as np
import pytest
import torch
from PIL import Image

from starflow.pipelines import StarFlowVideoPipeline
from starflow.sampling.sample import SamplerOptions, sample

KW = dict(seed=0, progress=False)


def test_text_to_video_shapes_and_output_types(video_pipe):
    out = video_pipe(["2", "5"], **KW)                       # trained length: 5 frames, 4 fps
    assert out.fps == 4 and len(out.frames) == 2 and len(out.frames[0]) == 5
    assert all(isinstance(f, Image.Image) and f.size == (8, 8) for f in out.frames[1])
    arr = video_pipe(["2", "5"], output_type="np", **KW).frames
    assert arr.shape == (2, 5, 8, 8, 1) and 0 <= arr.min() and arr.max() <= 1
    np.testing.assert_array_equal(np.asarray(out.frames[1][3]), (arr[1, 3, ..., 0] * 255).round().astype(np.uint8))
    assert video_pipe(["2"], output_type="pt", **KW).frames.shape == (1, 5, 1, 8, 8)
    lat = video_pipe(["2"], output_type="latent", num_frames=7, **KW).frames
    assert lat.shape == (1, 4, 2, 4, 4)                      # 1 + (7 - 1) / 2 latent frames
    again = video_pipe(["2"], output_type="latent", num_frames=7, **KW).frames
    assert torch.equal(lat, again)


def test_frame_count_the_autoencoder_cannot_take(video_pipe):
    with pytest.raises(ValueError, match=r"1 \+ 2k frames; 6 is not one \(try 5 or 7\)"):
        video_pipe(["2"], num_frames=6, **KW)


def test_image_to_video_keeps_the_first_frame(video_pipe):
    video_pipe.defaults.noise_std = 0.0                      # prefix noise off: the first latent frame is exact
    first = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    lat = video_pipe(["3", "4"], image=first, denoise="none", output_type="latent", **KW).frames
    expected = video_pipe.autoencoder.encode(first[None])[0]
    torch.testing.assert_close(lat[:, 0], expected.expand(2, -1, -1, -1))
    # the rest follows the prefix: different first frames give different continuations
    other = video_pipe(["3", "4"], image=-first, denoise="none", output_type="latent", **KW).frames
    assert (other[:, 1:] - lat[:, 1:]).abs().max() > 1e-4


def test_image_to_video_from_a_file_is_resized(video_pipe, tmp_path):
    path = tmp_path / "first.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8), "L").save(path)
    video_pipe.defaults.noise_std = 0.0
    lat = video_pipe(["3"], image=path, denoise="none", output_type="latent", **KW).frames
    torch.testing.assert_close(lat[0, 0, 0], torch.ones(4, 4))   # white, centre-cropped to 8x8, pooled


def test_image_of_the_wrong_size(video_pipe):
    with pytest.raises(ValueError, match=r"does not fit the video: expected \(1, 8, 8\)"):
        video_pipe(["3"], image=torch.zeros(1, 6, 6), **KW)
    with pytest.raises(ValueError, match="2 first frames for 3 videos"):
        video_pipe(["3"], num_videos_per_prompt=3, image=torch.zeros(2, 1, 8, 8), **KW)


def test_long_video_uses_the_sliding_window(video_pipe):
    c = video_pipe.config
    assert c.local_attn_window is None
    out = video_pipe(["6"], num_frames=11, output_type="latent", context_length=2, **KW).frames   # 6 latent frames
    assert out.shape == (1, 6, 2, 4, 4) and torch.isfinite(out).all()
    assert c.local_attn_window is None                       # restored after the call
    # the window equals what the sampler does with local_attn_window = trained latent frames (3)
    c.local_attn_window = 3
    try:
        g = torch.Generator().manual_seed(0)
        z = torch.randn((1, 6, 2, 4, 4), generator=g)
        enc = video_pipe.text_encoder
        x = sample(video_pipe.flow, z, enc.encode(["6"]), enc.null(1),
                   SamplerOptions(guidance=1.0, jacobi_block_size=4, context_length=2))
    finally:
        c.local_attn_window = None
    x = video_pipe._denoise_video(x, enc.encode(["6"]), "score", 3)
    torch.testing.assert_close(out, x)
    # the sequential sampler slides the same window: Jacobi without early stop gives its video
    exact = dict(output_type="latent", context_length=2, denoise="none", seed=0, guidance=1.0)
    seq = video_pipe(["6"], num_frames=11, method="sequential", **exact).frames
    jac = video_pipe(["6"], num_frames=11, jacobi_th=0.0, jacobi_max_iter=64, jacobi_block_size=4, **exact).frames
    torch.testing.assert_close(seq, jac, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="context_length"):
        video_pipe(["6"], num_frames=11, context_length=3, **KW)


def test_long_video_needs_local_shallow_blocks(labels, flow_factory, pool_ae):
    flow = flow_factory(temporal_causal=1)
    pipe = StarFlowVideoPipeline(flow, labels, pool_ae(), defaults=dict(num_frames=3))
    assert pipe(["1"], output_type="latent", **KW).frames.shape == (1, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="shallow_block_local=False"):
        pipe(["1"], num_frames=7, **KW)


def test_video_round_trip(video_pipe, pool_ae, tmp_path):
    a = video_pipe(["8"], output_type="pt", **KW).frames
    video_pipe.save_pretrained(tmp_path / "v")
    b = StarFlowVideoPipeline.from_pretrained(tmp_path / "v", autoencoder=pool_ae())(["8"], output_type="pt", **KW)
    assert torch.equal(a, b.frames) and b.fps == 4
