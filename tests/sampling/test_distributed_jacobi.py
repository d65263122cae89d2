"""Under torch.distributed, every rank runs the same number of Jacobi iterations (they agree on convergence)."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from starflow import ModelConfig, StarFlow
from starflow.sampling.inverse import JacobiStats
from starflow.sampling.sample import sample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_inputs(rank):
    g = torch.Generator().manual_seed(100)   # same draw, scaled differently per rank
    return torch.randn(1, 2, 4, 4, generator=g) * (0.01 if rank == 0 else 1.0), torch.randn(1, 3, 5, generator=g)


def _iterations(model, z, y) -> int:
    stats = JacobiStats()
    sample(model.eval(), z, y, method="jacobi", jacobi_block_size=16, jacobi_th=1e-3, jacobi_max_iter=16, stats=stats)
    return stats.iterations


def _worker(rank, port, cfg, state, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = StarFlow(ModelConfig.from_dict(cfg))
    model.load_state_dict(state)
    out[rank] = _iterations(model, *_rank_inputs(rank))
    dist.destroy_process_group()


def test_ranks_agree_on_jacobi_convergence(make_model):
    model = make_model(dtype=torch.float32, seed=1)
    alone = [_iterations(model, *_rank_inputs(r)) for r in range(2)]
    assert alone[0] != alone[1], "the two ranks' data should converge at different speeds on their own"
    ctx = mp.get_context("spawn")
    out = ctx.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), model.config.to_dict(), model.state_dict(), out), nprocs=2, join=True)
    assert out[0] == out[1] == max(alone)


def test_single_process_needs_no_process_group(make_model):
    model = make_model(dtype=torch.float32)
    assert not dist.is_initialized()
    z = torch.randn(1, 2, 4, 4)
    x = sample(model, z, torch.randn(1, 3, 5), method="jacobi")
    assert torch.isfinite(x).all()
