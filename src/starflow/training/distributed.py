"""Process groups, DDP / FSDP2 wrapping, and full (unsharded) state dicts in the single-process format.

Launched by `torchrun`, the trainer joins the process group from the environment (gloo on CPU, NCCL
on GPU), with a timeout (`dist.timeout_s`, default 600 s): a process that freezes or dies makes the others
stop with an error after that long instead of waiting. FSDP2 shards every transformer layer, then every flow block, then the root; on GPU it
computes in bf16 (fp32 gradient reduction). Checkpoints always hold *full* state dicts keyed by the
plain model's parameter names, so files written under FSDP, DDP or one process are interchangeable.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup_distributed", "wrap_model", "unwrap", "full_model_state", "load_model_state",
           "full_optim_state", "load_optim_state", "no_sync", "to_local_scalar", "ProcessGroupTimeout",
           "is_timeout"]


class ProcessGroupTimeout(dist.DistError):
    """Another process of the run did not answer within dist.timeout_s (it froze, died, or worked alone longer)."""


def is_timeout(e: BaseException) -> bool:
    """Whether a collective's error is a timeout (gloo raises a plain RuntimeError 'Timed out waiting ...')."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in text or "timeout" in text)


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"          # none | ddp | fsdp
    owns_group: bool = False        # this process initialised the group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes (in place on a copy; gloo needs CPU tensors, NCCL device ones)."""
        if not self.distributed:
            return t
        t = t.detach().clone().to(self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on any process (keeps all processes on the same control path)."""
        if not self.distributed:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def cleanup(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


DEFAULT_TIMEOUT_S = 600.0


def setup_distributed(strategy: str = "auto", backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
                      ) -> DistContext:
    """Join the torchrun process group when the environment names one; pick the device and strategy.
    timeout_s: how long a collective waits for the other processes before it raises."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")
        be = backend if backend != "auto" else ("nccl" if cuda else "gloo")
        dist.init_process_group(be, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if world == 1:
        strategy = "none"  # one process: nothing to synchronise or shard
    return DistContext(rank, world, local_rank, device, strategy, owns)


def _fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Sharding units, innermost first: transformer layers, then flow blocks (the root comes last)."""
    starflow = model.model if hasattr(model, "model") else model
    units: list[torch.nn.Module] = []
    trunks = list(starflow.blocks)
    if getattr(starflow, "learnable_self_denoiser", None) is not None:
        trunks.append(starflow.learnable_self_denoiser)
    for t in trunks:
        units.extend(getattr(t, "attn_blocks", []))
    # The denoiser runs through `Trunk.run`, not its forward: its own parameters stay in the root unit.
    units.extend(b for b in starflow.blocks if any(True for _ in b.parameters()))
    return units


def wrap_model(model: torch.nn.Module, ctx: DistContext, find_unused: bool = False) -> torch.nn.Module:
    """DDP or FSDP2 around `model` (already on ctx.device), or the model itself."""
    if ctx.strategy == "none":
        return model
    if ctx.strategy == "ddp":
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    kw = dict(mesh=mesh, reshard_after_forward=True)
    if ctx.device.type == "cuda":  # bf16 compute, fp32 gradient reduction; CPU stays fp32
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in _fsdp_units(model):
        fully_shard(unit, **kw)
    fully_shard(model, **kw)
    return model


def unwrap(wrapped: torch.nn.Module) -> torch.nn.Module:
    return wrapped.module if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else wrapped


def no_sync(wrapped: torch.nn.Module, sync: bool):
    """Skip gradient synchronisation on micro-batches before the last one of a step."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        @contextlib.contextmanager
        def ctx():
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)
        return ctx()
    return contextlib.nullcontext()


def to_local_scalar(t) -> torch.Tensor:
    """A DTensor (FSDP2 gradient norm) -> its full value; plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _opts(full: bool = True, offload: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=full, cpu_offload=offload)


def full_model_state(wrapped: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Full state dict on CPU (every process must call it under FSDP; only rank 0 gets the tensors)."""
    if ctx.strategy != "fsdp":
        return {k: v.detach().cpu().clone() for k, v in unwrap(wrapped).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(wrapped, options=_opts())


def load_model_state(wrapped: torch.nn.Module, ctx: DistContext, sd: dict[str, torch.Tensor]) -> None:
    if ctx.strategy != "fsdp":
        unwrap(wrapped).load_state_dict(sd, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(wrapped, sd, options=_opts(offload=False))


def full_optim_state(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimiser state keyed by parameter name (the same under FSDP, DDP or one process)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(unwrap(wrapped), optimizer, options=_opts())


def load_optim_state(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    for p in optimizer.param_groups:  # the loader initialises missing state only on parameters without grads
        for t in p["params"]:
            t.grad = None
    set_optimizer_state_dict(unwrap(wrapped), optimizer, sd, options=_opts(offload=False))
