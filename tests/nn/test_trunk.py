"""Trunk.run's `outputs`: only the last tokens' outputs, the same numbers, the same cache."""
import pytest
import torch

from starflow.nn.kv_cache import KVCache
from starflow.nn.trunk import Trunk


def _inputs(seed, B, L):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, 3, generator=g, dtype=torch.float64), torch.randn(B, 2, 4, generator=g, dtype=torch.float64)


def _trunk(**kw):
    torch.manual_seed(0)
    t = Trunk(3, 5, 16, 2, 8, txt_dim=4, **kw).double().eval()
    with torch.no_grad():
        for p in t.parameters():                 # proj_out starts at zero: give every weight a value
            p.normal_(0, 0.3)
    return t


@pytest.mark.parametrize("outputs", [1, 4, 9])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_last_outputs_equal_the_full_run(outputs, qk_norm):
    t = _trunk(qk_norm=qk_norm)
    x, text = _inputs(1, 2, 9)
    full = t.run(x, text)
    torch.testing.assert_close(t.run(x, text, outputs=outputs), full[:, 9 - outputs:], atol=1e-12, rtol=0)
    # after cached keys (a window continuing): the same, and the cache holds the same entries
    caches = [KVCache(2, 2, 2, 20, 8, dtype=torch.float64) for _ in range(2)]
    for c in caches:
        t.run(x[:, :4], text, cache=c)
    ref = t.run(x[:, 4:], None, cache=caches[0])
    got = t.run(x[:, 4:], None, cache=caches[1], outputs=min(outputs, 5))
    torch.testing.assert_close(got, ref[:, 5 - min(outputs, 5):], atol=1e-12, rtol=0)
    assert caches[0].pos == caches[1].pos == 2 + 9
    for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v):
        torch.testing.assert_close(a[:, :, :11], b[:, :, :11], atol=1e-12, rtol=0)


def test_no_outputs_fills_the_cache_with_the_same_entries():
    t = _trunk()
    x, text = _inputs(2, 2, 6)
    full, none = (KVCache(2, 2, 2, 8, 8, dtype=torch.float64) for _ in range(2))
    t.run(x, text, cache=full)
    assert t.run(x, text, cache=none, outputs=0) is None and none.pos == full.pos == 8
    for a, b in zip(full.k + full.v, none.k + none.v):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # more than the tokens: all of them; fewer than none: a caller's mistake
    torch.testing.assert_close(t.run(x, text, outputs=99), t.run(x, text), atol=0, rtol=0)
    with pytest.raises(ValueError, match="outputs must be >= 0"):
        t.run(x, text, outputs=-1)


def test_last_outputs_under_a_mask_take_its_last_rows():
    t = _trunk()
    x, text = _inputs(3, 1, 6)
    mask = torch.rand(8, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    mask |= torch.eye(8, dtype=torch.bool)      # every query sees at least itself
    full = t.run(x, text, causal=False, attn_mask=mask)
    torch.testing.assert_close(t.run(x, text, causal=False, attn_mask=mask, outputs=2), full[:, 4:], atol=1e-12, rtol=0)
