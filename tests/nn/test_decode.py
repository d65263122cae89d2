"""Compiled one-token steps (torch.compile of the same Trunk.run) agree with the eager steps."""
import pytest
import torch

from starflow.nn.decode import CompiledStep
from starflow.sampling.sample import sample


def _steps(block, x, y, rope, compiled: bool) -> torch.Tensor:
    cache = block.new_cache(x.size(0), y.size(1) + x.size(1))
    block.run(None, y, rope=rope, cache=cache)
    block.run(x[:, :3], None, rope=rope, cache=cache)         # a chunk first, as a prefix would be
    step = CompiledStep(block, cache, torch.float32) if compiled else None
    outs = []
    for t in range(3, x.size(1)):
        if compiled:
            q = cache.pos
            outs.append(step(x[:, t:t + 1], (rope[0][q:q + 1], rope[1][q:q + 1])))
        else:
            outs.append(block.run(x[:, t:t + 1], None, rope=rope, cache=cache))
    assert cache.pos == y.size(1) + x.size(1)
    return torch.cat(outs, 1)


def test_compiled_steps_equal_eager_and_follow_new_weights(make_model):
    model = make_model(dtype=torch.float32)
    block = model.deep
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, generator=g)
    y = torch.randn(2, 3, 5, generator=g)
    rope = model.rope_tables(block, 4, 4, 0, y)
    limit = torch._dynamo.config.recompile_limit
    with torch.no_grad():
        eager = _steps(block, x, y, rope, False)
        torch.testing.assert_close(_steps(block, x, y, rope, True), eager, atol=1e-5, rtol=1e-5)
        assert torch._dynamo.config.recompile_limit == limit    # raised only while a step runs
        block.proj_in.weight.mul_(-1.0)                       # an in-place update (an optimiser step):
        changed = _steps(block, x, y, rope, False)            # the compiled step must see the new weights
        assert (changed - eager).abs().max() > 1e-2
        torch.testing.assert_close(_steps(block, x, y, rope, True), changed, atol=1e-5, rtol=1e-5)


def test_compiled_sequential_sampling_with_guidance_and_prefix(make_model):
    model = make_model(dtype=torch.float32, temporal_causal=1, shallow_block_local=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 4, 4, generator=g)
    y = torch.randn(2, 3, 5, generator=g)
    z = model(x, y).z
    # image-to-video: the prefix sits in the cache before the compiled steps start
    out = sample(model, z, y, method="sequential", prefix=x[:, :1], compile=True)
    assert torch.equal(out[:, :1], x[:, :1])
    torch.testing.assert_close(out, sample(model, z, y, method="sequential", prefix=x[:, :1]), atol=1e-4, rtol=1e-4)
    y_null = torch.randn(2, 3, 5, generator=g)
    opts = dict(method="sequential", guidance=2.0)
    torch.testing.assert_close(sample(model, z, y, y_null, compile=True, **opts), sample(model, z, y, y_null, **opts),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_compiled_sequential_on_cuda(make_model):
    model = make_model(dtype=torch.float32).cuda()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 2, 4, 4, generator=g).cuda()
    y, y_null = torch.randn(2, 3, 5, generator=g).cuda(), torch.randn(2, 3, 5, generator=g).cuda()
    opts = dict(method="sequential", guidance=2.0)
    torch.testing.assert_close(sample(model, z, y, y_null, compile=True, **opts), sample(model, z, y, y_null, **opts),
                               atol=1e-4, rtol=1e-4)
