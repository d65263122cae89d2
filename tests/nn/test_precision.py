"""layers_compute_in: bf16-stored transformer layers computed in float32, one layer's weights at a time."""
import warnings

import pytest
import torch

from starflow.nn.layers import TransformerLayer
from starflow.nn.precision import layers_compute_in


def _layers(seed=0):
    torch.manual_seed(seed)
    return torch.nn.ModuleList([TransformerLayer(48, 24) for _ in range(2)]).eval()


def test_float32_compute_of_bf16_weights():
    ref = _layers()
    low = _layers().to(torch.bfloat16)
    exact = _layers()                      # float32 layers holding the bf16-rounded weights
    exact.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    before = {k: v.clone() for k, v in low.state_dict().items()}
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        want = exact[1](exact[0](x, None), None)
        with layers_compute_in(low) as n:
            got = low[1](low[0](x.bfloat16(), None), None)
            assert n == 2 and got.dtype == torch.bfloat16
            # float32 in, float32 out: the very computation of the float32 layers
            torch.testing.assert_close(low[1](low[0](x, None), None), want, atol=1e-6, rtol=1e-6)
        plain = low[1](low[0](x.bfloat16(), None), None)          # hooks gone: bf16 arithmetic again
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)   # only the bf16 output rounding
    assert (plain.float() - want).abs().max() > (got.float() - want).abs().max()
    assert all(torch.equal(v, before[k]) for k, v in low.state_dict().items())    # stored weights untouched
    assert all(p.dtype == torch.bfloat16 for p in low.parameters()) and not low[0]._forward_pre_hooks
    assert (ref[0].attention.qkv.weight - low[0].attention.qkv.weight.float()).abs().max() > 0


def test_weights_come_back_when_a_layer_raises():
    low = _layers().to(torch.bfloat16)
    with pytest.raises(RuntimeError), torch.no_grad(), layers_compute_in(low), warnings.catch_warnings():
        warnings.simplefilter("error")                            # the leaving hook itself must not fail
        low[0](torch.randn(2, 5, 7), None)                         # wrong width
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())


def test_float32_layers_are_left_alone():
    with layers_compute_in(_layers()) as n:
        assert n == 0


def test_bf16_model_samples_in_float32_on_a_cpu_without_native_bf16(make_model, monkeypatch):
    import starflow.sampling.sample as S
    monkeypatch.setattr(S, "native_bf16", lambda device: False)
    low = make_model(dtype=torch.float32).to(torch.bfloat16)
    exact = make_model(dtype=torch.float32)
    exact.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 3, 5, generator=g)
    got = S.sample(low, z.bfloat16(), y.bfloat16(), method="sequential")
    want = S.sample(exact, z, y, method="sequential")
    assert got.dtype == torch.bfloat16
    # only the bf16 activations between layers and the bf16 KV cache differ from the float32 model
    assert (got.float() - want).abs().max() < 0.1
    monkeypatch.setattr(S, "native_bf16", lambda device: True)    # native bf16: computed as stored
    native = S.sample(low, z.bfloat16(), y.bfloat16(), method="sequential")
    assert (native.float() - got.float()).abs().max() > 0
