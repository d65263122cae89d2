import torch

from starflow.data import DIGITS_LEVELS, DigitsDataset, digit_caption, digits_split, dequantize, to_unit_range
from starflow.data.digits import load_digits_arrays


def test_protocol_split_is_the_fixed_permutation():
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    train, test = digits_split()
    assert torch.equal(test, perm[:297]) and torch.equal(train, perm[297:])
    values, labels = load_digits_arrays()
    ds = DigitsDataset("test")
    assert len(ds) == 297 and len(DigitsDataset("train")) == 1500
    assert torch.equal(ds.values, values[perm[:297]])
    assert torch.equal(ds.labels, labels[perm[:297]])


def test_values_captions_and_labels():
    ds = DigitsDataset("train")
    assert ds.values.dtype == torch.uint8 and ds.values.shape == (1500, 1, 8, 8)
    assert int(ds.values.max()) == 16 and ds.levels == DIGITS_LEVELS == 17
    assert ds.captions[0] == digit_caption(int(ds.labels[0]))
    assert digit_caption(7) == "a handwritten digit seven"
    assert ds.num_classes == 10
    b = ds.get_batch(torch.tensor([3, 5]))
    assert b.values.shape == (2, 1, 8, 8) and b.captions == [ds.captions[3], ds.captions[5]]


def test_dequantisation_matches_the_protocol_formula():
    v = torch.tensor([0, 8, 16], dtype=torch.uint8)
    u = torch.tensor([0.0, 0.5, 0.999])
    x = dequantize(v, 17, u)
    torch.testing.assert_close(x, (v.float() + u) * 2 / 17 - 1)
    assert float(x.min()) >= -1 and float(x.max()) < 1
    torch.testing.assert_close(to_unit_range(v, 17), torch.tensor([-1.0, 0.0, 1.0]))


def test_upscaled_digits_repeat_pixels():
    small, big = DigitsDataset("test"), DigitsDataset("test", image_size=16)
    assert big.values.shape == (297, 1, 16, 16)
    assert torch.equal(big.values[:, :, ::2, ::2], small.values)
