import pytest
import torch
import torch.nn.functional as F

from starflow.nn import causal_attention as ca
from starflow.nn.causal_attention import blocked_causal_attention, use_blocked_causal


@pytest.mark.parametrize("L", [2, 7, 128, 129, 300])
def test_blocked_causal_attention_equals_sdpa_values_and_gradients(L):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, 3, L, 16, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, L, 16, generator=g)
    out = blocked_causal_attention(q, k, v, 0.3)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    # more than one block of queries: token 0 still sees only itself
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])


def test_only_short_float32_cpu_sequences_without_grouped_heads_take_it(monkeypatch):
    monkeypatch.setattr(ca, "intel_mkl", lambda: False)             # the AMD rule (next test: Intel's)
    q = torch.zeros(2, 4, 64, 8)
    assert use_blocked_causal(q, q)
    assert not use_blocked_causal(q.double(), q.double())           # float64 checks keep the reference kernel
    assert use_blocked_causal(q.bfloat16(), q.bfloat16())           # autocast: computed in float32
    assert not use_blocked_causal(q, q[:, :2])                      # grouped key / value heads
    assert not use_blocked_causal(q[:, :, :1], q[:, :, :1])         # one token: nothing to block
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        assert not use_blocked_causal(q, q)                         # a pinned kernel is the one that runs
    assert use_blocked_causal(q, q)
    monkeypatch.setattr(ca, "MAX_SCORE_BYTES", 2 * 4 * 64 * 64 * 4 - 1)
    assert not use_blocked_causal(q, q)                             # the score matrix would be too large


def test_on_an_intel_cpu_only_reduced_precision_training_takes_it(monkeypatch):
    monkeypatch.setattr(ca, "intel_mkl", lambda: True)              # SDPA's flash is faster there otherwise
    q = torch.zeros(2, 4, 64, 8)
    assert not use_blocked_causal(q, q)
    assert not use_blocked_causal(q.requires_grad_(), q)             # float32 training: flash
    assert not use_blocked_causal(q.detach().bfloat16(), q.bfloat16())      # bf16 inference: flash
    qb = q.detach().bfloat16().requires_grad_()
    assert use_blocked_causal(qb, qb)                                # autocast training: blocked
    with torch.no_grad():
        assert not use_blocked_causal(qb, qb)


def test_bf16_inputs_are_attended_in_float32_and_returned_in_bf16():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 8, generator=g).bfloat16() for _ in range(3))
    out = blocked_causal_attention(q, k, v, 0.5)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=0.5)
    torch.testing.assert_close(out.float(), ref, atol=1e-6, rtol=2 ** -8)   # one rounding to bf16, at the end


def test_a_training_forward_takes_the_blocked_path_and_matches_sdpa(monkeypatch):
    from starflow.nn.layers import Attention
    import starflow.nn.layers as layers

    monkeypatch.setattr(ca, "intel_mkl", lambda: False)
    torch.manual_seed(0)
    attn = Attention(32, 8, "layer_norm", None, None, False, False, True, False)
    x = torch.randn(2, 10, 32, requires_grad=True)
    calls = []
    monkeypatch.setattr(layers, "blocked_causal_attention",
                        lambda *a: calls.append(1) or blocked_causal_attention(*a))
    out = attn(x, None)
    assert calls
    monkeypatch.setattr(layers, "use_blocked_causal", lambda q, k: False)
    torch.testing.assert_close(out, attn(x, None), atol=2e-6, rtol=1e-5)
