import torch

from starflow.data import DIRECTIONS, MovingDigitsDataset, moving_caption, render_moving_digit


def _centre(frame):  # (1, H, W) -> (row, col) centre of mass
    f = frame[0].float()
    r = torch.arange(f.size(0)).float()
    return float((f.sum(1) * r).sum() / f.sum()), float((f.sum(0) * r).sum() / f.sum())


def test_each_direction_moves_the_right_way():
    sprite = torch.full((1, 8, 8), 16, dtype=torch.uint8)
    for d, name in enumerate(DIRECTIONS):
        video = render_moving_digit(sprite, d, offset=3, canvas=16, num_frames=5)
        assert video.shape == (5, 1, 16, 16)
        (r0, c0), (r1, c1) = _centre(video[0]), _centre(video[-1])
        delta = {"left": (0, -8), "right": (0, 8), "up": (-8, 0), "down": (8, 0)}[name]
        assert (round(r1 - r0), round(c1 - c0)) == delta, name
        assert all(int(video[t].sum()) == int(sprite.sum()) for t in range(5))  # never clipped


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
