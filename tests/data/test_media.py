import numpy as np
import pytest
import torch
from PIL import Image

from starflow.data.media import make_grid, save_image_grid, save_video, to_uint8, video_grid


def mp4_frames(path):
    import av
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = c.streams.video[0].average_rate
    return frames, rate


def test_to_uint8_maps_the_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 4)
    assert to_uint8(x).ravel().tolist() == [0, 128, 255, 255]
    # an overflowed sample (NaN / inf, see sampling.sample) shows as black / clipped, never as stray bytes
    bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0]).reshape(1, 1, 4)
    assert to_uint8(bad).ravel().tolist() == [0, 255, 0, 128]
    from starflow.pipelines.image import convert_images
    assert convert_images(bad[None], "pt").ravel().tolist() == [0.0, 1.0, 0.0, 0.5]
    assert np.asarray(convert_images(bad[None], "pil")[0]).ravel().tolist() == [0, 255, 0, 128]


def test_grid_layout():
    imgs = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 1.0, -1.0)])    # 3 images, 2x3
    g = make_grid(imgs, nrow=2, padding=1)
    assert g.shape == (2 * 2 + 3, 2 * 3 + 3, 1)
    assert g[1, 1, 0] == 0 and g[1, 5, 0] == 255 and g[4, 5, 0] == 0            # padding/empty cell stay 0
    assert make_grid(imgs, nrow=3, padding=0, scale=2).shape == (4, 18, 1)


def test_png_gif_mp4_are_valid(tmp_path):
    frames = torch.linspace(-1, 1, 5 * 3 * 6 * 10).reshape(5, 3, 6, 10)          # (T, C, H, W)
    png = save_image_grid(frames, tmp_path / "g.png", nrow=5)
    assert Image.open(png).format == "PNG"
    gif = save_video(frames, tmp_path / "v.gif", fps=5)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.info["duration"] == 200
    mp4 = save_video(frames, tmp_path / "v.mp4", fps=5)
    got, rate = mp4_frames(mp4)
    assert len(got) == 5 and got[0].shape == (6, 10, 3) and rate == 5
    # near lossless: the last frame's mean survives encoding
    assert abs(got[-1].mean() - to_uint8(frames[-1]).mean()) < 8


def test_video_grid_and_odd_sizes(tmp_path):
    vids = torch.zeros(3, 4, 1, 5, 7)                                            # odd sides, grayscale
    assert video_grid(vids, nrow=3, padding=0).shape == (4, 5, 21, 1)
    got, _ = mp4_frames(save_video(vids, tmp_path / "g.mp4", fps=8, nrow=3))
    assert len(got) == 4 and got[0].shape[:2] == (5 + 4 + 1, 7 * 3 + 8 + 1)   # padding 2, padded to even


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="use one of .mp4, .gif"):
        save_video(torch.zeros(2, 3, 4, 4), tmp_path / "v.avi")
    with pytest.raises(ValueError, match="fps must be > 0"):
        save_video(torch.zeros(2, 3, 4, 4), tmp_path / "v.gif", fps=0)
    with pytest.raises(ValueError, match="channels"):
        save_image_grid(np.zeros((1, 4, 4, 2), np.uint8), tmp_path / "x.png")
