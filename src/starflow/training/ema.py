"""Exponential moving average of the weights.

The averages live next to the parameters they track (same device, same sharding under FSDP), so an
update is one fused `lerp` and needs no communication. `swapped_in` temporarily puts the averages into
the model (evaluation, sample grids, the final export) and restores the trained weights afterwards.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["EMA"]


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        # warm-up: early on the average would be dominated by the random initialisation
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)

    @contextlib.contextmanager
    def swapped_in(self):
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state(self) -> dict[str, torch.Tensor]:
        """Full averaged tensors by parameter name (collective under FSDP: every process must call)."""
        out = {}
        for n, s in zip(self.names, self.shadow):
            full = s.full_tensor() if hasattr(s, "full_tensor") else s
            out[n] = full.detach().cpu().clone()
        return out

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise ValueError(f"EMA state lacks {', '.join(missing[:5])}")
        for n, s in zip(self.names, self.shadow):
            full = state[n].to(torch.float32)
            if hasattr(s, "device_mesh"):  # FSDP: keep only this process's shard
                from torch.distributed.tensor import distribute_tensor
                full = distribute_tensor(full.to(s.device_mesh.device_type), s.device_mesh, s.placements)
            s.copy_(full)
        self.updates = updates
