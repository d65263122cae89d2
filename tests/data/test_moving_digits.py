import pytest
import torch

from starflow.data import DIRECTIONS, MovingDigitsDataset, moving_caption, render_moving_digit
from starflow.data.moving_digits import bounce_positions, start_choices


def _corner(frame):  # (1, H, W) -> (row, col) of the top-left corner of the ink
    nz = torch.nonzero(frame[0])
    return int(nz[:, 0].min()), int(nz[:, 1].min())


def test_bounce_positions_mirror_at_the_walls():
    assert bounce_positions(4, 4, 8, 8) == [4, 8, 4, 0, 4, 8, 4, 0]
    assert bounce_positions(6, -2, 8, 7) == [6, 4, 2, 0, 2, 4, 6]
    assert bounce_positions(1, 3, 5, 5) == [1, 4, 3, 0, 3]          # 7 -> 3 (mirrored at 5), -3 -> 3
    with pytest.raises(ValueError, match="speed 9 must be in 1..8"):
        bounce_positions(0, 9, 8, 3)


def test_each_direction_starts_the_right_way_and_bounces():
    sprite = torch.full((1, 8, 8), 16, dtype=torch.uint8)
    for d, name in enumerate(DIRECTIONS):
        start = start_choices(d, 8, 4)[0]
        video = render_moving_digit(sprite, d, offset=3, canvas=16, num_frames=6, start=start, speed=4)
        assert video.shape == (6, 1, 16, 16)
        track = [_corner(video[t]) for t in range(6)]
        axis = 1 if name in ("left", "right") else 0
        sign = -1 if name in ("left", "up") else 1
        steps = [track[t + 1][axis] - track[t][axis] for t in range(5)]
        assert steps[0] == 4 * sign, name                                     # the captioned direction first
        assert all(abs(s) == 4 for s in steps) and -4 * sign in steps, name  # whole steps, and a bounce
        assert {p[1 - axis] for p in track} == {3}                            # the other coordinate stays
        assert all(int(video[t].sum()) == int(sprite.sum()) for t in range(6))  # never clipped


def test_starts_sit_on_the_speed_lattice_when_the_span_allows():
    assert start_choices(0, 8, 4) == [4, 8] and start_choices(1, 8, 4) == [0, 4]
    assert start_choices(1, 8, 2) == [0, 2, 4, 6]
    assert start_choices(2, 7, 2) == [2, 3, 4, 5, 6, 7]                     # 7 is not a multiple of 2: any


def test_dataset_captions_labels_and_determinism():
    a = MovingDigitsDataset("train", num_videos=12, canvas=12, num_frames=4, seed=3)
    b = MovingDigitsDataset("train", num_videos=12, canvas=12, num_frames=4, seed=3)
    assert torch.equal(a.values, b.values) and a.captions == b.captions
    assert a.values.shape == (12, 4, 1, 12, 12) and a.is_video and a.levels == 17
    for i in range(12):
        d, r = int(a.digits[i]), int(a.directions[i])
        assert a.captions[i] == moving_caption(d, r)
        assert int(a.labels[i]) == d * 4 + r
    assert moving_caption(7, 0) == "a handwritten digit seven moving left"
    assert a.num_classes == 40
    test = MovingDigitsDataset("test", num_videos=12, canvas=12, num_frames=4, seed=3)
    assert not torch.equal(test.values, a.values)


def test_bad_speed():
    with pytest.raises(ValueError, match="speed must be 1..4 pixels per frame on a 12-pixel canvas"):
        MovingDigitsDataset("train", num_videos=2, canvas=12, speed=5)
