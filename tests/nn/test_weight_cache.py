"""nn.weight_cache: copies derived from weights, kept while the weights stay the same."""
import gc

import pytest
import torch

from starflow.nn import weight_cache
from starflow.nn.packed import packed_linears, packing_available


@pytest.fixture(autouse=True)
def _empty_cache():
    weight_cache.clear()
    yield
    weight_cache.clear()


class _Maker:
    """make() for cached(): a copy of the layer's weight, counting the calls."""

    def __init__(self, layer):
        self.layer, self.calls = layer, 0

    def __call__(self):
        self.calls += 1
        w = self.layer.weight.detach().clone()
        return w, w.numel() * w.element_size()


def _get(layer, make):
    return weight_cache.cached(layer, "copy", [layer.weight, layer.bias], make)


def _opt_step(layer):
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 4)).sum().backward()
    opt.step()


@pytest.mark.parametrize("change", [
    "optimiser step",
    "no_grad copy_",
    "data copy_",            # the version counter does not see it: the sums do
    "data assignment",
    "load_state_dict",
    "bias only",
])
def test_kept_until_the_weights_change(change):
    layer = torch.nn.Linear(4, 3)
    make = _Maker(layer)
    first = _get(layer, make)
    assert _get(layer, make) is first and make.calls == 1
    new = torch.randn(3, 4)
    if change == "optimiser step":
        _opt_step(layer)
    elif change == "no_grad copy_":
        with torch.no_grad():
            layer.weight.copy_(new)
    elif change == "data copy_":
        v = layer.weight._version
        layer.weight.data.copy_(new)
        assert layer.weight._version == v
    elif change == "data assignment":
        layer.weight.data = new
    elif change == "load_state_dict":
        layer.load_state_dict({"weight": new, "bias": layer.bias.detach().clone()})
    else:
        layer.bias.data.add_(1.0)
    again = _get(layer, make)
    assert make.calls == 2 and again is not first
    torch.testing.assert_close(again, layer.weight.detach())
    assert _get(layer, make) is again and make.calls == 2


def test_off_by_environment(monkeypatch):
    layer = torch.nn.Linear(4, 3)
    make = _Maker(layer)
    monkeypatch.setenv("STARFLOW_WEIGHT_CACHE", "0")
    _get(layer, make), _get(layer, make)
    assert make.calls == 2 and weight_cache.cached_bytes() == 0


def test_budget_keeps_the_most_recent_and_never_an_oversized_copy(monkeypatch):
    layers = [torch.nn.Linear(4, 3) for _ in range(3)]        # 48-byte float32 weights
    makes = [_Maker(x) for x in layers]
    monkeypatch.setattr(weight_cache, "BUDGET_BYTES", 100)
    _get(layers[0], makes[0]), _get(layers[1], makes[1])
    assert weight_cache.cached_bytes() == 96
    _get(layers[0], makes[0])                                  # used again: now the most recent
    _get(layers[2], makes[2])                                  # over the budget: layer 1's copy goes
    assert weight_cache.cached_bytes() == 96
    _get(layers[0], makes[0]), _get(layers[1], makes[1])
    assert [m.calls for m in makes] == [1, 2, 1]
    big = torch.nn.Linear(40, 3)
    make = _Maker(big)
    _get(big, make), _get(big, make)
    assert make.calls == 2                                     # made for each call, never kept


def test_a_deleted_module_frees_its_copies():
    layer = torch.nn.Linear(4, 3)
    _get(layer, _Maker(layer))
    assert weight_cache.cached_bytes() == 48
    del layer
    gc.collect()
    assert weight_cache.cached_bytes() == 0


def test_an_owner_freed_while_the_lock_is_held_does_not_deadlock():
    """A weakref callback can run inside any allocation, also one made under the cache's lock by this thread."""
    layer = torch.nn.Linear(4, 3)
    _get(layer, _Maker(layer))
    with weight_cache._LOCK:
        del layer                                   # the callback runs here, on this thread
        gc.collect()
    assert weight_cache.cached_bytes() == 0


@pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")
def test_packed_weights_are_packed_once_and_follow_the_weights(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16).eval()
    x = torch.randn(64, 32)
    reorders = []
    real = torch.ops.mkldnn._reorder_linear_weight

    class Ops:
        @staticmethod
        def _reorder_linear_weight(*a):
            reorders.append(1)
            return real(*a)
        _linear_pointwise = torch.ops.mkldnn._linear_pointwise

    from starflow.nn import packed
    monkeypatch.setattr(packed.torch.ops, "mkldnn", Ops, raising=False)
    with torch.no_grad():
        for _ in range(2):
            with packed_linears(layer) as n:
                assert n == 1
                torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        assert len(reorders) == 1
        layer.weight.data.copy_(torch.randn(16, 32))           # e.g. an EMA copied in through .data
        with packed_linears(layer):
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        assert len(reorders) == 2


def test_weights_made_under_inference_mode():
    with torch.inference_mode():
        layer = torch.nn.Linear(4, 3)
    make = _Maker(layer)
    _get(layer, make), _get(layer, make)
    assert make.calls == 1
    with torch.inference_mode():
        layer.weight.mul_(2.0)                                 # no version counter to see it: the sum does
    torch.testing.assert_close(_get(layer, make), layer.weight)
    assert make.calls == 2


def _counting_sums(monkeypatch) -> list:
    """Record the shape of every Tensor.sum call (the stamps' reads of the weights)."""
    shapes = []
    real = torch.Tensor.sum

    def counting(self, *a, **k):
        shapes.append(tuple(self.shape))
        return real(self, *a, **k)
    monkeypatch.setattr(torch.Tensor, "sum", counting)
    return shapes


def test_one_call_reads_each_weight_once_and_only_while_open(monkeypatch):
    layer = torch.nn.Linear(4, 3)
    make = _Maker(layer)
    sums = _counting_sums(monkeypatch)
    _get(layer, make)
    assert len(sums) == 2                                      # weight and bias, outside a call: every lookup
    _get(layer, make)
    assert len(sums) == 4 and make.calls == 1
    with weight_cache.one_call():
        _get(layer, make)
        with weight_cache.one_call():                          # nested: the same call
            weight_cache.cached(layer, "weight only", [layer.weight], make)
            _get(layer, make)
    assert len(sums) == 6 and make.calls == 2                  # two reads for three stamps over the same tensors
    layer.weight.data.add_(1.0)                                # after the call a write through .data is seen again
    torch.testing.assert_close(_get(layer, make), layer.weight.detach())
    assert make.calls == 3
    with weight_cache.one_call():
        with torch.no_grad():
            layer.weight.add_(1.0)                             # the version counter still counts inside a call
        torch.testing.assert_close(_get(layer, make), layer.weight.detach())
    assert make.calls == 4


def test_frozen_tensors_are_stamped_without_a_sum(monkeypatch):
    layer = torch.nn.Linear(4, 3)
    weight_cache.freeze([layer.weight])
    make = _Maker(layer)
    sums = _counting_sums(monkeypatch)
    _get(layer, make), _get(layer, make)
    assert sums == [(3,), (3,)] and make.calls == 1             # the bias only
    with torch.no_grad():
        layer.weight.mul_(2.0)                                 # identity, address and version still tell
    torch.testing.assert_close(_get(layer, make), layer.weight.detach())
    assert make.calls == 2
    key = id(layer.weight)
    del layer, make
    gc.collect()
    assert key not in weight_cache._frozen                     # forgotten with the tensor
