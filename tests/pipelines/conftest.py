"""Tiny pipelines for the pipeline tests: random flows, the real label encoder, a toy autoencoder stand-in."""
import pytest
import torch
import torch.nn.functional as F

from starflow import ModelConfig, StarFlow
from starflow.conditioning import load_text_encoder
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline

TINY_IMAGE = dict(channel_size=2, img_size=4, patch_size=1, channels=48, blocks=2, layers_per_block=[1, 1],
                  head_dim=24, rope=True, sos=True, txt_size=1, txt_dim=11, cond_top_only=True, use_softplus=True,
                  use_final_norm=True, soft_clip=2.0, seq_order="L2R")
TINY_VIDEO = dict(TINY_IMAGE, temporal_causal=1, shallow_block_local=True)


class PoolAutoencoder(torch.nn.Module):
    """Stand-in autoencoder with the contract's interface (starflow.autoencoders had not landed when these
    tests were written): 2x average-pool / nearest upsample in space, a causal 2x in time for videos
    (frame 0 alone, then pairs), channels 1 <-> 2 by duplication."""

    spec = "pool-standin"
    spatial_factor = 2
    latent_channels = 2
    pixel_channels = 1

    def __init__(self, temporal_factor: int = 2):
        super().__init__()
        self.temporal_factor = temporal_factor

    def encode(self, x, sample=True, generator=None):
        if x.dim() == 5:                                              # (B, T, 1, H, W)
            tf = self.temporal_factor
            first, rest = x[:, :1], x[:, 1:]
            if rest.size(1):
                rest = rest.reshape(x.size(0), -1, tf, *x.shape[2:]).mean(2)
            x = torch.cat([first, rest], 1)
            return self.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        z = F.avg_pool2d(x, 2)
        return torch.cat([z, -z], 1)

    def decode(self, z):
        if z.dim() == 5:
            x = self.decode(z.flatten(0, 1)).unflatten(0, z.shape[:2])
            first, rest = x[:, :1], x[:, 1:].repeat_interleave(self.temporal_factor, 1)
            return torch.cat([first, rest], 1)
        return F.interpolate(z[:, :1], scale_factor=2, mode="nearest")


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_flow(seed: int = 0, **overrides) -> StarFlow:
    cfg = ModelConfig.from_dict({**TINY_IMAGE, **overrides})
    return randomize(StarFlow(cfg), seed).eval()



@pytest.fixture
def flow_factory():
    return make_flow


@pytest.fixture
def pool_ae():
    return PoolAutoencoder


@pytest.fixture
def labels():     # per test: a pipeline's .to("cuda") moves its text encoder
    return load_text_encoder("labels:10", 1)


@pytest.fixture
def image_pipe(labels):
    """Pixel-space (identity autoencoder) image pipeline: every component loads from its spec."""
    return StarFlowPipeline(make_flow(), labels, None, defaults=dict(noise_std=0.1, denoise="score",
                                                                       sampling=dict(guidance=1.5, jacobi_block_size=4)),
                            autoencoder_spec="identity")


@pytest.fixture
def latent_image_pipe(labels):
    return StarFlowPipeline(make_flow(), labels, PoolAutoencoder(), defaults=dict(noise_std=0.1, sampling=dict(guidance=1.0)))


@pytest.fixture
def video_pipe(labels):
    flow = make_flow(seed=1, **{k: v for k, v in TINY_VIDEO.items() if k not in TINY_IMAGE})
    return StarFlowVideoPipeline(flow, labels, PoolAutoencoder(),
                                 defaults=dict(noise_std=0.1, num_frames=5, fps=4, denoise="score",
                                               sampling=dict(guidance=1.0, jacobi_block_size=4)))
