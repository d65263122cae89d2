"""Model offload: the text encoder and the autoencoder wait in host memory while the flow samples on the GPU.

The idea of diffusers' `enable_model_cpu_offload`: a pipeline's components run one after the other (text
encoder, then the flow, then the autoencoder), so only the one that runs needs to be on the accelerator. With
`pipe.enable_cpu_offload("cuda")` the flow stays on the GPU and each other component is moved there just
for its call and back to the CPU after it, so that a 7B video flow in bf16 (~15 GB) and a T5-XL encoder
(~10 GB in float32) never hold GPU memory at the same time as the activations of sampling. The outputs are
those of the same components without offload; the cost is one host <-> device copy of each component per use.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["OffloadMixin"]


class OffloadMixin:
    """enable_cpu_offload / disable_cpu_offload, and `_use(component)` around every component call."""

    _offload_device: torch.device | None = None

    def enable_cpu_offload(self, device: str | torch.device = "cuda") -> "OffloadMixin":
        """Keep the flow on `device` and the text encoder / autoencoder on the CPU, each moved to `device` only
        while it runs. `pipe.to(...)` (everything on one device) turns this off again."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("enable_cpu_offload: device cuda requested but torch sees no CUDA device")
        self.flow.to(device)
        for comp in self._offloaded():
            comp.to("cpu")
        self._offload_device = device
        return self

    def disable_cpu_offload(self) -> "OffloadMixin":
        """Back to every component on the flow's device."""
        device, self._offload_device = self._offload_device, None
        if device is not None:
            for comp in self._offloaded():
                comp.to(device)
        return self

    @property
    def cpu_offload(self) -> torch.device | None:
        """The device components are moved to for their calls, or None when offload is off."""
        return self._offload_device

    def _offloaded(self) -> list[Any]:
        return [c for c in (self.text_encoder, self.autoencoder) if c is not None and hasattr(c, "to")]

    @contextlib.contextmanager
    def _use(self, component: Any) -> Iterator[Any]:
        """The component, on the execution device for the duration of the block (and back on the CPU after it)
        when offload is on; as it is otherwise."""
        device = self._offload_device
        if device is None or component is None or not hasattr(component, "to"):
            yield component
            return
        component.to(device)
        try:
            yield component
        finally:
            component.to("cpu")
