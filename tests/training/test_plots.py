"""Training sample grids: the layout, the upscaling, and the same pixel rule as the pipelines' files."""
import numpy as np
import torch
from PIL import Image

from starflow.data.media import to_uint8
from starflow.training.plots import save_grid


def test_image_grid_is_near_square_and_upscaled(tmp_path):
    x = torch.linspace(-1, 1, 5 * 8 * 8).reshape(5, 1, 8, 8)
    x[4] = float("nan")                                        # an overflowed sample: black
    img = np.asarray(Image.open(save_grid(x, tmp_path / "g.png")))
    # 5 images -> 2 rows x 3 columns of 8x8 with 1-pixel borders: 19 x 28, then x9 (256 // 28)
    assert img.shape == (19 * 9, 28 * 9)
    cell = img[9:9 + 72:9, 9:9 + 72:9]                         # first image, one pixel per source pixel
    assert np.array_equal(cell, to_uint8(x[0])[..., 0])
    assert img[9 + 9 * 9, 9 + 9 * 9] == 0                       # the NaN sample (row 2, column 2) is black
    assert img[0, 0] == 128                                     # grey borders


def test_video_grid_has_one_row_of_frames_per_sample(tmp_path):
    v = torch.rand(2, 3, 3, 4, 4) * 2 - 1                       # (B, T, C, H, W), RGB
    img = np.asarray(Image.open(save_grid(v, tmp_path / "v.png", scale=1)))
    assert img.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert np.array_equal(img[6:10, 11:15], to_uint8(v[1, 2]))   # sample 1, frame 2
