"""Under torch.distributed, every rank runs the same number of Jacobi iterations (they agree on convergence)."""
import pytest
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from starflow import ModelConfig, StarFlow
from starflow.sampling.jacobi import JacobiStats
from starflow.sampling.sample import sample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_inputs(rank):
    g = torch.Generator().manual_seed(100)   # same draw, scaled differently per rank
    return torch.randn(1, 2, 4, 4, generator=g) * (0.01 if rank == 0 else 1.0), torch.randn(1, 3, 5, generator=g)


def _iterations(model, z, y, **kw) -> int | tuple[int, int]:
    stats = JacobiStats()
    opts = {**dict(jacobi_block_size=16, jacobi_th=1e-3, jacobi_max_iter=16), **kw}
    sample(model.eval(), z, y, method="jacobi", stats=stats, **opts)
    return (stats.iterations, stats.draft_iterations) if kw else stats.iterations


# the sliding schedule with a bf16 draft: window moves and the draft's own iterations must agree too
SLIDING_DRAFT = dict(jacobi_schedule="sliding", jacobi_draft="bf16", jacobi_block_size=4)


def _worker(rank, port, cfg, state, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = StarFlow(ModelConfig.from_dict(cfg))
    model.load_state_dict(state)
    out[rank] = _iterations(model, *_rank_inputs(rank))
    out[f"draft{rank}"] = _iterations(model, *_rank_inputs(rank), **SLIDING_DRAFT)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_jacobi_convergence(make_model):
    model = make_model(dtype=torch.float32, seed=1)
    alone = [_iterations(model, *_rank_inputs(r)) for r in range(2)]
    assert alone[0] != alone[1], "the two ranks' data should converge at different speeds on their own"
    ctx = mp.get_context("spawn")
    out = ctx.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), model.config.to_dict(), model.state_dict(), out), nprocs=2, join=True)
    assert out[0] == out[1] == max(alone)
    drafted = [_iterations(model, *_rank_inputs(r), **SLIDING_DRAFT) for r in range(2)]
    assert drafted[0] != drafted[1]
    assert out["draft0"] == out["draft1"]


def test_single_process_needs_no_process_group(make_model):
    model = make_model(dtype=torch.float32)
    assert not dist.is_initialized()
    z = torch.randn(1, 2, 4, 4)
    x = sample(model, z, torch.randn(1, 3, 5), method="jacobi")
    assert torch.isfinite(x).all()
