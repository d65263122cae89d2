import math

import pytest
import torch

from starflow.data import BatchSampler, aspect_ratio_to_image_size, nearest_bucket, parse_ratio


def test_official_rounding_rule():
    # area ~ size^2, sides rounded to the nearest multiple
    assert aspect_ratio_to_image_size(256, None) == (256, 256)
    assert aspect_ratio_to_image_size(256, "1:1") == (256, 256)
    h, w = aspect_ratio_to_image_size(256, "16:9", multiple=8)
    assert (h, w) == (192, 344)
    assert aspect_ratio_to_image_size(256, "9:16", multiple=8) == (344, 192)
    h, w = aspect_ratio_to_image_size(640, "16:9", multiple=16)
    assert h % 16 == 0 and w % 16 == 0 and abs(h * w / 640 ** 2 - 1) < 0.05
    with pytest.raises(ValueError, match="W:H"):
        parse_ratio("wide")


def test_nearest_bucket_in_log_space():
    ratios = [parse_ratio(r) for r in ("1:1", "2:1", "1:2")]
    assert nearest_bucket(100, 100, ratios) == 0
    assert nearest_bucket(100, 190, ratios) == 1   # wide
    assert nearest_bucket(190, 100, ratios) == 2   # tall
    assert math.isclose(parse_ratio("16:9"), 16 / 9)


def test_sampler_is_a_function_of_the_step_and_covers_each_epoch():
    s = BatchSampler(10, 4, seed=1)
    first = [s.indices(i) for i in range(5)]
    again = BatchSampler(10, 4, seed=1)
    assert all(torch.equal(again.indices(i), first[i]) for i in reversed(range(5)))  # random access
    stream = torch.cat(first)                     # 20 items = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    assert not torch.equal(BatchSampler(10, 4, seed=2).indices(0), first[0])


def test_bucketed_batches_never_mix_buckets():
    ids = [0] * 9 + [1] * 5
    s = BatchSampler(14, 4, seed=0, bucket_ids=ids)
    seen = {0: [], 1: []}
    for step in range(3 * s.epoch_batches):
        batch = s.indices(step).tolist()
        b = {ids[i] for i in batch}
        assert len(b) == 1 and len(batch) == 4
        seen[b.pop()] += batch
    assert set(seen[0]) == set(range(9)) and set(seen[1]) == set(range(9, 14))
