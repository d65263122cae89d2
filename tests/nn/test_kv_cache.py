import torch

from starflow.nn.kv_cache import KVCache


def test_kv_cache_move_handles_overlapping_ranges():
    c = KVCache(2, 1, 1, 10, 2)
    for i in range(2):
        c.k[i][:] = torch.arange(10.).view(1, 1, 10, 1) + 100 * i
        c.v[i][:] = -c.k[i]
    c.move(3, 1, 5, turn_keys=lambda k: k + 0.5)
    for i in range(2):
        assert c.k[i][0, 0, 1:6, 0].tolist() == [x + 100 * i + 0.5 for x in (3, 4, 5, 6, 7)]
        assert c.v[i][0, 0, 1:6, 0].tolist() == [-(x + 100 * i) for x in (3, 4, 5, 6, 7)]
        assert c.k[i][0, 0, 0, 0] == 100 * i                      # outside the target range: untouched
