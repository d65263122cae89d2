"""Tiny pipelines for the page: random flows with the real label encoder, pixel space and a real small KL
autoencoder saved to a temp dir and loaded back through its spec (the path `starflow serve` takes)."""
import socket

import pytest
import torch

from starflow import ModelConfig, StarFlow
from starflow.autoencoders import SmallKLAutoencoder, SmallKLConfig, load_autoencoder
from starflow.conditioning import load_text_encoder
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline

# 8x8 grey pictures in 2x2 patches (16 tokens): large enough to look at, sampled in a fraction of a second
TINY = dict(channel_size=1, img_size=8, patch_size=2, channels=32, blocks=2, layers_per_block=[1, 1], head_dim=16,
            rope=True, sos=True, txt_size=1, txt_dim=11, cond_top_only=True, use_softplus=True, use_final_norm=True,
            soft_clip=2.0, seq_order="L2R")
# videos of 8x8 frames through a small KL autoencoder (2x smaller, 2 channels): 4x4 latents per frame
TINY_VIDEO = dict(TINY, channel_size=2, img_size=4, patch_size=1, temporal_causal=1, shallow_block_local=True)
IMAGE_DEFAULTS = dict(noise_std=0.1, denoise="score", sampling=dict(guidance=1.5, jacobi_block_size=4))
VIDEO_DEFAULTS = dict(noise_std=0.1, denoise="score", num_frames=4, fps=4,
                      sampling=dict(guidance=1.0, jacobi_block_size=4))


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_flow(seed: int = 0, **overrides) -> StarFlow:
    return randomize(StarFlow(ModelConfig.from_dict({**TINY, **overrides})), seed).eval()


def make_image_pipe(**overrides) -> StarFlowPipeline:
    return StarFlowPipeline(make_flow(**overrides), load_text_encoder("labels:10", 1), None, defaults=IMAGE_DEFAULTS,
                            autoencoder_spec="identity")


def make_video_pipe(ae_dir) -> StarFlowVideoPipeline:
    torch.manual_seed(0)
    ae = SmallKLAutoencoder(SmallKLConfig(in_channels=1, latent_channels=2, hidden_channels=[8, 8]))
    ae.save_pretrained(ae_dir)
    return StarFlowVideoPipeline(make_flow(seed=1, **TINY_VIDEO), load_text_encoder("labels:10", 1),
                                 load_autoencoder(f"kl:{ae_dir}"), defaults=VIDEO_DEFAULTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def image_pipe():
    return make_image_pipe()


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def pipe_factory():
    return make_image_pipe


@pytest.fixture
def video_pipe(tmp_path):
    return make_video_pipe(tmp_path / "ae")


@pytest.fixture
def uncond_pipe():
    return StarFlowPipeline(make_flow(txt_size=0, txt_dim=0, cond_top_only=False), None, None,
                            defaults=dict(sampling=dict(jacobi_block_size=4)), autoencoder_spec="identity")


def serve(pipe, out_dir):
    """The app over a pipeline or ModelSession on a free loopback port, in this process -> (app, Client)."""
    from gradio_client import Client

    from starflow.serve import build_app, launch

    app = build_app(pipe, out_dir=out_dir, name="tiny")
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    return app, Client(f"http://127.0.0.1:{port}", verbose=False, download_files=str(out_dir / "client"))


@pytest.fixture(scope="module")
def image_app(tmp_path_factory):
    out = tmp_path_factory.mktemp("image_app")
    pipe = make_image_pipe()
    app, client = serve(pipe, out)
    yield pipe, app, client
    app.close()


@pytest.fixture(scope="module")
def video_app(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_app")
    pipe = make_video_pipe(out / "ae")
    app, client = serve(pipe, out)
    yield pipe, app, client
    app.close()


@pytest.fixture
def serve_app():
    """serve(), closing what it started at the end of the test."""
    apps = []

    def start(pipe, out_dir):
        app, client = serve(pipe, out_dir)
        apps.append(app)
        return app, client
    yield start
    for app in apps:
        app.close()
