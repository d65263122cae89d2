"""packed_linears: Linear layers multiplying from weights packed once (oneDNN), for inference on a CPU."""
import pytest
import torch

from starflow.nn.layers import TransformerLayer
from starflow.nn import packed
from starflow.nn.packed import linear_then, packed_linears, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")


def _layers(seed=0):
    torch.manual_seed(seed)
    return torch.nn.ModuleList([TransformerLayer(48, 24), TransformerLayer(48, 24, bias=False)]).eval()


def _run(layers, x):
    return layers[1](layers[0](x, None), None)


@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 5, 48), (3, 64, 48)])
def test_same_numbers_as_the_plain_layers(shape):
    layers = _layers()
    x = torch.randn(*shape)
    with torch.no_grad():
        want = _run(layers, x)
        with packed_linears(layers) as n:
            assert n == 8                                 # qkv, proj and the two MLP layers of each
            assert all("forward" in m.__dict__ for m in layers.modules() if isinstance(m, torch.nn.Linear))
            got = _run(layers, x)
            # non-contiguous input (a transposed view) takes the same product
            xt = x.transpose(0, 1).contiguous().transpose(0, 1)
            torch.testing.assert_close(_run(layers, xt), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # restored on exit: the layers are plain Linear modules again
    assert not any("forward" in m.__dict__ for m in layers.modules())


def test_a_no_op_with_gradients_and_restored_after_an_error():
    layers = _layers()
    with packed_linears(layers) as n:                     # gradients on: training forward, left alone
        assert n == 0
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), packed_linears(layers) as n:
            assert n == 8
            raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in layers.modules())


def test_a_call_that_needs_gradients_takes_the_plain_product():
    lin = torch.nn.Linear(8, 4)
    with torch.no_grad(), packed_linears(lin):
        with torch.enable_grad():
            x = torch.randn(3, 8, requires_grad=True)
            out = lin(x)
            out.sum().backward()                          # the packed op has no backward: must not be used
    torch.testing.assert_close(x.grad, lin.weight.detach().sum(0).expand(3, 8))


@pytest.mark.parametrize("intel", [True, False])
def test_on_an_intel_cpu_a_few_float32_rows_take_the_blas_product(monkeypatch, intel):
    import starflow.nn.packed as packed

    monkeypatch.setattr(packed, "intel_mkl", lambda: intel)
    lin = torch.nn.Linear(8, 4)
    blas_rows = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, *a: blas_rows.append(x.shape[:-1]) or real(x, *a))
    x_small, x_big = torch.randn(2, 3, 8), torch.randn(4, packed.MKL_SMALL_ROWS, 8)
    with torch.no_grad(), packed_linears(lin):
        small, big = lin(x_small), lin(x_big)
    assert blas_rows == ([(2, 3)] if intel else [])        # 6 rows: MKL's own product on an Intel CPU
    torch.testing.assert_close(small, real(x_small, lin.weight, lin.bias))
    torch.testing.assert_close(big, real(x_big, lin.weight, lin.bias))


@pytest.mark.parametrize("intel", [True, False])
def test_a_single_pass_packs_float32_weights_only_where_mkl_would_repack(monkeypatch, intel):
    import starflow.nn.packed as packed

    monkeypatch.setattr(packed, "intel_mkl", lambda: intel)
    layers = _layers()
    with torch.no_grad():
        with packed_linears(layers, single_pass=True) as n:
            assert n == (0 if intel else 8)
        with packed_linears(layers.bfloat16(), single_pass=True) as n:
            assert n == 8                                 # bf16: oneDNN's packed product is faster everywhere


def test_nested_contexts_and_other_dtypes():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        want = lin(x)
        with packed_linears(lin) as outer:
            with packed_linears(lin) as inner:            # already packed: the outer context owns it
                assert (outer, inner) == (1, 0)
            assert "forward" in lin.__dict__
            # an input of another dtype than the packed weight: the layer's own product (and its error)
            with pytest.raises(RuntimeError):
                lin(x.double())
            torch.testing.assert_close(lin(x), want, atol=1e-6, rtol=1e-6)
        assert "forward" not in lin.__dict__
        with packed_linears(lin, enabled=False) as n:
            assert n == 0


def test_threads_sharing_a_model_get_the_same_numbers():
    import threading
    layers = _layers()
    x = torch.randn(2, 7, 48)
    with torch.no_grad():
        want = _run(layers, x)
    out, errors = [], []

    def work():
        try:
            with torch.no_grad():
                for _ in range(20):
                    with packed_linears(layers):
                        out.append(_run(layers, x))
        except Exception as e:      # pragma: no cover - the failure being tested for
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 60
    for got in out:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not any("forward" in m.__dict__ for m in layers.modules())


def test_weights_it_cannot_pack_keep_their_own_product(monkeypatch):
    import starflow.nn.packed as packed
    layers = _layers()
    x = torch.randn(2, 3, 48)
    with torch.no_grad():
        want = _run(layers, x)

        def refuse(w, hint):
            raise RuntimeError("oneDNN refuses")
        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
        with packed_linears(layers) as n:
            assert n == 0
            torch.testing.assert_close(_run(layers, x), want)
        # a weight that is not a plain strided tensor (a sharded one, say) is not touched either
        lin = torch.nn.Linear(4, 4)
        assert packed._packable(lin)
        lin.weight = torch.nn.Parameter(lin.weight.detach().to_sparse(), requires_grad=False)
        assert not packed._packable(lin)


def test_nothing_is_packed_above_the_memory_budget():
    """The packed copies sit beside the weights: a block of a big model is left as it is (peak memory)."""
    import starflow.nn.packed as packed
    layers = _layers()
    nbytes = sum(m.weight.numel() * 4 for m in layers.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        with packed_linears(layers, max_bytes=nbytes) as n:
            assert n == 8
        with packed_linears(layers, max_bytes=nbytes - 1) as n:
            assert n == 0 and not any("forward" in m.__dict__ for m in layers.modules())
    assert packed.PACK_BUDGET_BYTES >= 64 * 2**20     # the bench and demo models (tens of MB) are packed


def _plain_then(layer, x, post, other, approximate):
    y = torch.nn.functional.linear(x, layer.weight, layer.bias)
    if post == "gelu":
        return torch.nn.functional.gelu(y, approximate=approximate)
    return other + y if post == "add" else y * other


@pytest.mark.parametrize("post,approximate", [("gelu", "none"), ("gelu", "tanh"), ("add", "none"), ("mul", "none")])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_linear_then_fuses_the_step_into_a_packed_product(monkeypatch, post, approximate, bias, rows):
    monkeypatch.setattr(packed, "intel_mkl", lambda: False)     # every row count takes the packed product
    torch.manual_seed(1)
    layer = torch.nn.Linear(40, 24, bias=bias).eval()
    x = torch.randn(2, rows, 40) * 3
    other = torch.randn(2, rows, 24) if post != "gelu" else None
    want = _plain_then(layer, x, post, other, approximate)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    with torch.no_grad(), packed_linears(layer):
        monkeypatch.setattr(packed.torch.ops.mkldnn, "_linear_pointwise", _Counting(real, calls), raising=False)
        got = linear_then(layer, x, post, other, approximate)
    assert calls == [post if post != "gelu" else "gelu"]           # one oneDNN call did the product and the step
    if approximate == "tanh":    # oneDNN's tanh GELU: within an ulp or so of torch's
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:                        # erf GELU, + and *: the same float32 bits
        assert torch.equal(got, want)
    # bf16: the GELU reads the float32 product before rounding, so close rather than equal
    lb = torch.nn.Linear(40, 24, bias=bias).eval().to(torch.bfloat16)
    xb, ob = x.to(torch.bfloat16), None if other is None else other.to(torch.bfloat16)
    with torch.no_grad(), packed_linears(lb):
        gb = linear_then(lb, xb, post, ob, approximate)
    torch.testing.assert_close(gb.float(), _plain_then(lb, xb, post, ob, approximate).float(), rtol=2e-2, atol=2e-2)


class _Counting:
    def __init__(self, real, calls):
        self.real, self.calls = real, calls

    def __call__(self, x, w, b, attr, *args):
        self.calls.append(attr)
        return self.real(x, w, b, attr, *args)

    def binary(self, x, other, w, b, attr):
        self.calls.append(attr)
        return self.real.binary(x, other, w, b, attr)


def test_linear_then_without_packing_runs_the_steps_and_keeps_gradients():
    torch.manual_seed(2)
    layer = torch.nn.Linear(8, 6)
    x = torch.randn(3, 8, requires_grad=True)
    other = torch.randn(3, 6)
    y = linear_then(layer, x, "add", other)
    assert torch.equal(y, other + layer(x))
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad(), packed_linears(layer):     # packed, but an operand of another shape: the steps
        odd = torch.randn(1, 6)
        assert torch.equal(linear_then(layer, x.detach(), "add", odd), odd + layer(x.detach()))
    with pytest.raises(ValueError, match="post must be one of"):
        linear_then(layer, x, "relu")
    with pytest.raises(ValueError, match="needs the other operand"):
        linear_then(layer, x, "add")
