"""packed_linears: Linear layers multiplying from weights packed once (oneDNN), for inference on a CPU."""
import pytest
import torch

from starflow.nn.layers import TransformerLayer
from starflow.nn.packed import packed_linears, packing_available

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
