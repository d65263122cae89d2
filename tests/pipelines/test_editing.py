"""Inpainting and editing through the pipelines: pixels and masks in, the known pixels kept exactly."""
import numpy as np
import pytest
import torch
from PIL import Image

import starflow.pipelines.editing as editing
from starflow.pipelines.editing import read_mask

KW = dict(seed=0, output_type="pt", denoise="none")


def _picture(pipe, seed=1, frames=None):
    H, W = pipe._pixel_size(None, None, None)
    shape = (1, pipe.pixel_channels, H, W) if frames is None else (1, frames, pipe.pixel_channels, H, W)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_inpainting_keeps_every_known_pixel(image_pipe, latent_image_pipe):
    for pipe in (image_pipe, latent_image_pipe):
        x = _picture(pipe)
        H, W = x.shape[-2:]
        out = pipe.inpaint("3", x, (0, H // 2, W, H), iterations=2, **KW).images * 2 - 1   # the lower half
        torch.testing.assert_close(out[..., :H // 2, :], x[..., :H // 2, :], atol=1e-6, rtol=0)
        assert (out[..., H // 2:, :] - x[..., H // 2:, :]).abs().max() > 1e-2
    # nothing to fill: the picture itself; everything to fill: an ordinary sample
    x = _picture(image_pipe)
    torch.testing.assert_close(image_pipe.inpaint("3", x, torch.zeros(4, 4, dtype=torch.bool), **KW).images * 2 - 1,
                               x, atol=1e-6, rtol=0)
    full = image_pipe.inpaint("3", x, torch.ones(4, 4, dtype=torch.bool), **KW).images
    assert full.shape == (1, 2, 4, 4)


def test_a_latent_mask_covers_every_cell_a_masked_pixel_touches(latent_image_pipe, video_pipe):
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[3, 5] = True                                              # one pixel -> latent cell (1, 2)
    px, lm = latent_image_pipe._masks(m, torch.zeros(1, 1, 8, 8), torch.Size((1, 2, 4, 4)))
    assert px.shape == (1, 1, 8, 8) and lm.shape == (1, 1, 4, 4) and lm.sum() == 1 and lm[0, 0, 1, 2]
    per_picture = torch.zeros(3, 8, 8, dtype=torch.bool)
    per_picture[1, 0, 0] = True
    _, lm = latent_image_pipe._masks(per_picture, torch.zeros(3, 1, 8, 8), torch.Size((3, 2, 4, 4)))
    assert lm.shape == (3, 1, 4, 4) and lm.sum() == 1 and lm[1, 0, 0, 0]
    frames = torch.zeros(5, 8, 8, dtype=torch.bool)
    frames[4, 7, 7] = True                                      # pixel frame 4 -> latent frame 2 (pairs after 0)
    _, lm = video_pipe._masks(frames, torch.zeros(1, 5, 1, 8, 8), torch.Size((1, 3, 2, 4, 4)))
    assert lm.shape == (1, 3, 1, 4, 4) and lm.sum() == 1 and lm[0, 2, 0, 3, 3]


def test_edit_with_strength_zero_and_the_same_prompt_gives_the_picture_back(image_pipe, monkeypatch):
    x = _picture(image_pipe)
    exact = dict(method="sequential", **KW)
    back = image_pipe.edit("3", x, strength=0.0, **exact).images * 2 - 1
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)                   # the picture itself
    other = image_pipe.edit("7", x, source_prompt="3", strength=0.6, **exact).images * 2 - 1
    assert (other - back).abs().max() > 1e-2
    # a mask limits the change; repeated edits of one picture invert it once
    calls = []
    real = editing.encode
    monkeypatch.setattr(editing, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    for strength in (0.3, 0.6, 0.9):
        part = image_pipe.edit("7", x, source_prompt="5", strength=strength, mask_image=(0, 2, 4, 4), **exact)
        part = part.images * 2 - 1
        torch.testing.assert_close(part[..., :2, :], x[..., :2, :], atol=1e-6, rtol=0)
    assert calls == [1]
    with pytest.raises(ValueError, match="strength"):
        image_pipe.edit("7", x, strength=2.0, **KW)
    with pytest.raises(ValueError, match="give the picture"):
        image_pipe.edit("7", **KW)


def test_video_inpainting_keeps_the_known_region_of_every_frame(video_pipe):
    x = _picture(video_pipe, frames=5)
    out = video_pipe.inpaint("4", x, (0, 0, 8, 4), iterations=2, **KW).frames * 2 - 1    # the upper half
    assert out.shape == (1, 5, 1, 8, 8)
    torch.testing.assert_close(out[..., 4:, :], x[..., 4:, :], atol=1e-6, rtol=0)
    frames = torch.zeros(5, 8, 8, dtype=torch.bool)
    frames[3:] = True                                          # the last latent frame is made: image-to-video
    out = video_pipe.inpaint("4", x, frames, **KW).frames * 2 - 1
    torch.testing.assert_close(out[:, :3], x[:, :3], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="a mask per frame needs 5 of them"):
        video_pipe.inpaint("4", x, frames[:4], **KW)


def test_masks_and_pictures_are_checked(image_pipe, tmp_path):
    png = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 127, 128, 255]] * 4, dtype=np.uint8)).save(png)
    assert read_mask(png, 4, 4)[0].tolist() == [False, False, True, True]       # thresholded at half intensity
    assert read_mask((1, 0, 3, 2), 4, 4).sum() == 4
    assert read_mask(np.eye(4), 4, 4).sum() == 4                                 # 0 / 1 arrays are fine
    with pytest.raises(ValueError, match="0 / 1 or booleans"):
        read_mask(np.full((4, 4), 0.5), 4, 4)
    with pytest.raises(ValueError, match="not inside"):
        read_mask((0, 0, 5, 2), 4, 4)
    with pytest.raises(ValueError, match="does not fit the 4x4 picture"):
        read_mask(np.zeros((3, 4)), 4, 4)
    with pytest.raises(ValueError, match="mask image is 4x4; the picture is 8x8"):
        read_mask(png, 8, 8)
    with pytest.raises(ValueError, match="does not fit the model"):
        image_pipe.inpaint("3", torch.zeros(1, 2, 8, 8), (0, 0, 2, 2), **KW)
    with pytest.raises(ValueError, match="NaN"):
        image_pipe.inpaint("3", torch.full((1, 2, 4, 4), float("nan")), (0, 0, 2, 2), **KW)
