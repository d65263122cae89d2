"""The frame reader's ceiling and floor: real held-out videos score ~1, shuffled frames and noise score low."""
import numpy as np
import pytest
import torch

from starflow.data import MovingDigitsDataset
from starflow.data.base import to_unit_range
from starflow.evaluation.video_reader import VideoReader, motion_ok, score_videos


@pytest.fixture(scope="module")
def reader():
    return VideoReader()


@pytest.fixture(scope="module")
def held():
    ds = MovingDigitsDataset("test", 200, canvas=16, num_frames=8, seed=1, speed=4)
    return ds, to_unit_range(ds.values, 17)


def _score(reader, ds, x):
    return score_videos(reader.read(x), ds.digits.numpy(), ds.directions.numpy()).figures()


def test_real_held_out_videos_score_close_to_one(reader, held):
    ds, x = held
    f = _score(reader, ds, x)
    assert f.digit >= 0.98 and f.direction == 1.0 and f.both >= 0.98 and f.consistency >= 0.98
    assert f.num_videos == 200
    rd = reader.read(x[:3])
    assert rd.positions.shape == (3, 8, 2) and rd.readable.all() and rd.canvas == (16, 16)


def test_tracks_follow_the_sprite(reader, held):
    ds, x = held
    rd = reader.read(x[:20])
    for i in range(20):
        axis = 1 if int(ds.directions[i]) < 2 else 0
        # the located window sits on the sprite's placement (within a pixel: blank border columns)
        assert abs(rd.positions[i, 0, axis] - int(ds.starts[i])) <= 1
        assert abs(rd.positions[i, 0, 1 - axis] - int(ds.offsets[i])) <= 1


def test_shuffled_frames_lose_the_direction_not_the_digit(reader, held):
    ds, x = held
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(8, generator=g) for _ in range(len(x))])
    f = _score(reader, ds, x[torch.arange(len(x))[:, None], perm])
    assert f.digit >= 0.98 and f.direction < 0.2 and f.both < 0.2


def test_noise_scores_low(reader, held):
    ds, x = held
    g = torch.Generator().manual_seed(0)
    for noise in (torch.rand(x.shape, generator=g) * 2 - 1, torch.randn(x.shape, generator=g).clamp(-1, 1)):
        f = _score(reader, ds, noise)
        assert f.digit < 0.2 and f.direction < 0.1 and f.consistency < 0.1
    blank = _score(reader, ds, -torch.ones_like(x))
    assert blank.digit == 0 and blank.consistency == 0


def test_a_still_digit_does_not_move(reader, held):
    ds, x = held
    still = x[:, :1].expand(-1, 8, -1, -1, -1)
    f = _score(reader, ds, still)
    assert f.digit >= 0.98 and f.direction == 0


def test_motion_rules():
    canvas = (16, 16)
    right = np.array([[3, c] for c in (0, 4, 8, 4, 0)], float)
    assert motion_ok(right, 1, canvas) and not motion_ok(right, 0, canvas)
    assert not motion_ok(right[:, ::-1], 1, canvas) and motion_ok(right[:, ::-1], 3, canvas)   # down, by rows
    turn_midway = np.array([[3, c] for c in (0, 4, 2, 6)], float)
    assert not motion_ok(turn_midway, 1, canvas)                      # reverses away from a wall
    stall = np.array([[3, c] for c in (0, 4, 4, 8)], float)
    assert not motion_ok(stall, 1, canvas)
    drift = np.array([[r, c] for r, c in ((3, 0), (4, 4), (6, 8))], float)
    assert not motion_ok(drift, 1, canvas)                            # leaves its line by 3 px
    with pytest.raises(ValueError, match="a track needs"):
        motion_ok(right[:1], 1, canvas)


def test_reader_rejects_bad_shapes(reader):
    with pytest.raises(ValueError, match=r"expected videos \(N, T, C, H, W\)"):
        reader.read(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="cannot hold an 8x8 digit"):
        reader.read(torch.zeros(1, 2, 1, 6, 6))


def test_wrapping_digits_are_read_across_the_edges(reader):
    ds = MovingDigitsDataset("test", 100, canvas=16, num_frames=8, seed=2, speed=4, align=True, motion="wrap")
    x = to_unit_range(ds.values, 17)
    f = score_videos(reader.read(x, wrap=True), ds.digits.numpy(), ds.directions.numpy()).figures()
    assert f.digit >= 0.98 and f.direction == 1.0 and f.consistency >= 0.98
    # read as if the canvas had edges, a digit split across one is not a digit
    flat = reader.read(x)
    assert (~flat.readable).any() and flat.readable.mean() < reader.read(x, wrap=True).readable.mean()
    g = torch.Generator().manual_seed(1)
    perm = torch.stack([torch.randperm(8, generator=g) for _ in range(len(x))])
    shuffled = score_videos(reader.read(x[torch.arange(len(x))[:, None], perm], wrap=True), ds.digits.numpy(),
                            ds.directions.numpy()).figures()
    assert shuffled.direction < 0.1


def test_wrapping_motion_rules():
    canvas = (16, 16)
    left = np.array([[4, c] for c in (8, 4, 0, 12, 8)], float)                   # 0 -> 12: across the edge
    assert motion_ok(left, 0, canvas, wrap=True) and not motion_ok(left, 0, canvas)
    assert not motion_ok(left, 1, canvas, wrap=True)
    back = np.array([[4, c] for c in (8, 4, 8, 4)], float)
    assert not motion_ok(back, 0, canvas, wrap=True)                           # on a torus it never turns


def test_moves_every_step():
    from starflow.evaluation.video_reader import moves_every_step
    canvas = (16, 16)
    assert moves_every_step(np.array([[4, c] for c in (0, 4, 8, 4, 0)], float), canvas)
    assert not moves_every_step(np.array([[4, c] for c in (0, 4, 4, 8)], float), canvas)
    assert moves_every_step(np.array([[4, c] for c in (8, 12, 0, 4)], float), canvas, wrap=True)
    assert not moves_every_step(np.array([[4, c] for c in (8, 12, 12)], float), canvas, wrap=True)
