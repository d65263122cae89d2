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


# ---- video-to-video -------------------------------------------------------------------------------------------

def _source(video_pipe, prompt="4"):
    return video_pipe([prompt], output_type="pt", **KW).frames[0] * 2 - 1          # (5, 1, 8, 8) in [-1, 1]


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_video_to_video_with_the_same_prompt_gives_the_source_back(video_pipe, guidance):
    # exact inversion: one forward pass to the noise, the sampler back; no denoising step in between
    src = _source(video_pipe)
    lat = video_pipe(["4"], video=src, source_prompt="4", guidance=guidance, denoise="none", method="sequential",
                     output_type="latent", seed=0).frames
    torch.testing.assert_close(lat, video_pipe.autoencoder.encode(src[None]), atol=1e-4, rtol=1e-4)
    jac = video_pipe(["4"], video=src, source_prompt="4", guidance=guidance, denoise="none", jacobi_th=1e-9,
                     jacobi_max_iter=100, output_type="latent", seed=0).frames
    torch.testing.assert_close(jac, lat, atol=1e-4, rtol=1e-4)


def test_video_to_video_under_another_prompt_changes_the_video(video_pipe):
    src = _source(video_pipe)
    same = video_pipe(["4"], video=src, source_prompt="4", denoise="none", output_type="latent", seed=0).frames
    other = video_pipe(["7"], video=src, source_prompt="4", denoise="none", output_type="latent", seed=0).frames
    assert other.shape == same.shape == (1, 3, 2, 4, 4)
    assert (other - same).abs().max() > 1e-3                            # a new prompt: another video
    two = video_pipe(["7", "4"], video=torch.stack([src, src]), source_prompt="4", denoise="none",
                     output_type="latent", seed=0).frames                 # one prompt per video
    torch.testing.assert_close(two, torch.cat([other, same]))
    pixels = video_pipe(["7"], video=src, source_prompt="4", output_type="pt", seed=0)
    assert pixels.frames.shape == (1, 5, 1, 8, 8) and pixels.fps == 4


def test_video_to_video_from_a_file(video_pipe, tmp_path):
    from starflow.data.media import save_video

    src = _source(video_pipe)
    save_video(src, tmp_path / "src.gif", fps=4)
    from_file = video_pipe(["4"], video=tmp_path / "src.gif", source_prompt="4", denoise="none",
                           output_type="latent", seed=0).frames
    # the GIF holds 8-bit pixels (and its writer merges the pool autoencoder's repeated frames: they come back)
    rounded = ((src + 1) * 127.5).round() / 127.5 - 1
    direct = video_pipe(["4"], video=rounded, source_prompt="4", denoise="none", output_type="latent", seed=0)
    torch.testing.assert_close(from_file, direct.frames, atol=1e-4, rtol=1e-4)


def test_video_to_video_bad_input(video_pipe, tmp_path):
    src = _source(video_pipe)
    # a model without recorded aspect ratios takes other sizes of its grid (as generation does), not any size
    with pytest.raises(ValueError, match=r"does not fit the model: height 7 must be a positive multiple of 2"):
        video_pipe(["4"], video=torch.zeros(5, 1, 7, 7), **KW)
    with pytest.raises(ValueError, match=r"does not fit the model: expected \(B, T, 1, H, W\)"):
        video_pipe(["4"], video=torch.zeros(5, 3, 8, 8), **KW)
    with pytest.raises(ValueError, match="1 \\+ 2k frames; 4 is not one"):
        video_pipe(["4"], video=src[:4], **KW)
    with pytest.raises(ValueError, match="at most the trained length"):
        video_pipe(["4"], video=torch.cat([src, src[1:]]), **KW)            # 9 frames: 5 latent frames
    with pytest.raises(ValueError, match="3 prompts for 2 pictures"):
        video_pipe(["1", "2", "3"], video=torch.stack([src, src]), **KW)
    with pytest.raises(ValueError, match="not both"):
        video_pipe(["1"], video=src, image=src[0], **KW)
    with pytest.raises(ValueError, match="source_prompt goes with video="):
        video_pipe(["1"], source_prompt="4", **KW)
    with pytest.raises(FileNotFoundError, match="video not found"):
        video_pipe(["1"], video=tmp_path / "missing.gif", **KW)
    (tmp_path / "bad.gif").write_bytes(b"not a gif")
    with pytest.raises(ValueError, match="cannot read video"):
        video_pipe(["1"], video=tmp_path / "bad.gif", **KW)


def test_the_learned_denoiser_precision_reaches_the_video_denoising(labels, pool_ae):
    """sampling denoiser_precision="bf16": the same sample, denoised by the kept bf16 copy (close to, not equal
    to, the float32 denoising); "model" is the default."""
    from .conftest import TINY_IMAGE, TINY_VIDEO, make_flow

    flow = make_flow(seed=1, learnable_self_denoiser=True, conditional_denoiser=True,
                     **{k: v for k, v in TINY_VIDEO.items() if k not in TINY_IMAGE})
    pipe = StarFlowVideoPipeline(flow, labels, pool_ae(), defaults=dict(
        noise_std=0.1, num_frames=5, fps=4, denoise="learned", sampling=dict(guidance=1.0, jacobi_block_size=4)))
    kw = dict(KW, output_type="latent")
    raw = pipe(["3"], denoise="none", **kw).frames
    full = pipe(["3"], **kw).frames
    assert torch.equal(pipe(["3"], denoiser_precision="model", **kw).frames, full)
    half = pipe(["3"], denoiser_precision="bf16", **kw).frames
    step = (full - raw).abs().max().item()
    assert step > 0 and not torch.equal(half, full) and (half - full).abs().max().item() < 0.1 * step
