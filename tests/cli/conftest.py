"""Shared by the command-line tests: tiny pixel-space pipeline folders (label-conditioned), a tiny trained
digits model."""
import pytest
import torch

from starflow import ModelConfig, StarFlow
from starflow.conditioning import load_text_encoder
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline

from ..evaluation.tiny_nets import train_tiny_digits


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    return train_tiny_digits(tmp_path_factory.mktemp("tiny_run"))


TINY = dict(channel_size=1, img_size=4, patch_size=1, channels=48, blocks=2, layers_per_block=[1, 1], head_dim=24,
            rope=True, sos=True, txt_size=1, txt_dim=11, cond_top_only=True, use_softplus=True, use_final_norm=True,
            soft_clip=2.0, seq_order="L2R")


def _tiny_flow(seed=0, **overrides):
    flow = StarFlow(ModelConfig.from_dict({**TINY, **overrides}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return flow.eval()


@pytest.fixture
def make_tiny_flow():
    return _tiny_flow


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("img") / "pipe"
    StarFlowPipeline(_tiny_flow(), load_text_encoder("labels:10", 1), None, autoencoder_spec="identity",
                     defaults=dict(noise_std=0.1, denoise="score", sampling=dict(guidance=1.0))).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vid") / "pipe"
    StarFlowVideoPipeline(_tiny_flow(1, temporal_causal=1, shallow_block_local=True), load_text_encoder("labels:10", 1),
                          None, autoencoder_spec="identity",
                          defaults=dict(noise_std=0.1, num_frames=3, fps=5, sampling=dict(guidance=1.0))
                          ).save_pretrained(d)
    return d
