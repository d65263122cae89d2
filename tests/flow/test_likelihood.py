import math

import torch

from starflow.flow.likelihood import bits_per_dim, nll, official_loss


def test_nll_is_change_of_variables(make_model):
    model = make_model()
    x, y = torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    out = model(x, y)
    D = 32
    expected = 0.5 * out.z.pow(2).flatten(1).sum(1) + 0.5 * D * math.log(2 * math.pi) \
        - sum(ld.flatten(1).sum(1) for ld in out.logdets)
    torch.testing.assert_close(nll(model, x, y), expected)
    loss = official_loss(model, x, y)["loss"]
    torch.testing.assert_close(loss, ((expected - 0.5 * D * math.log(2 * math.pi)) / D).mean())


def test_bits_per_dim_digits_protocol():
    # a uniform density on [-1, 1]^64 (log p = -64 log 2) is 17 levels -> log2(17) bits per pixel
    nll_nats = torch.tensor(64 * math.log(2.0), dtype=torch.float64)
    assert abs(bits_per_dim(nll_nats, 64, 2 / 17).item() - math.log2(17)) < 1e-9
