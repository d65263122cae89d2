"""What a training step differentiates: the flow's per-sample loss terms (what DDP / FSDP wrap), the
learnable denoiser's target, and residual dropout."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..flow.model import StarFlow

__all__ = ["TrainModule", "denoiser_target", "add_dropout"]


def denoiser_target(x_grad: torch.Tensor, grad_accum: int, sigma: torch.Tensor) -> torch.Tensor:
    """The official denoiser target: sigma * d(per-sample NLL)/dx, recovered from the gradient of the
    batch-mean loss (divided by grad_accum): roughly unit variance, like a diffusion model's noise."""
    # loss = mean_b mean_dims(...) / accum, and per-sample NLL = dims * (...): the factor is numel * accum
    return x_grad.detach() * (x_grad.numel() * grad_accum) * sigma.view(-1, *[1] * (x_grad.dim() - 1))


def add_dropout(model: torch.nn.Module, p: float) -> None:
    """Residual dropout on every attention and MLP output, through forward hooks: a training-time regulariser
    (small data sets overfit fast) that leaves the architecture and its state dict unchanged."""
    from ..nn.layers import MLP, Attention

    def hook(module, args, output):
        return F.dropout(output, p, training=module.training)

    for m in model.modules():
        if isinstance(m, (Attention, MLP)):
            m.register_forward_hook(hook)


class TrainModule(torch.nn.Module):
    """What DDP / FSDP wrap: the flow's per-sample loss terms, or the denoiser's prediction."""

    def __init__(self, model: StarFlow, latent_reg: bool):
        super().__init__()
        self.model = model
        self.latent_reg = latent_reg

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, denoise: bool = False):
        if denoise:
            return self.model.denoise_output(x, y)
        out = self.model(x, y)
        loss_z, loss_logdet = self.model.loss_terms(out.z, out.logdets)        # (b,), (b,)
        reg = x.new_zeros(())
        if self.latent_reg:  # intermediate block outputs (the input's norm has no parameter gradient)
            reg = sum(o.float().pow(2).mean() for o in out.block_outputs[1:-1]) if len(out.block_outputs) > 2 \
                else reg
        return loss_z, loss_logdet, reg
