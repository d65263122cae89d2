"""SD-VAE through diffusers AutoencoderKL: a tiny random one saved to disk, loaded with load_autoencoder."""
import json
import socket

import pytest
import torch

from starflow.autoencoders import SDVAE, Autoencoder, MissingWeightsError, load_autoencoder


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    d = tmp_path_factory.mktemp("tiny_sd_vae")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=16).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def ae(sd_dir):
    return load_autoencoder(f"sd-vae:{sd_dir}")


def test_factors_and_frozen(ae):
    assert isinstance(ae, SDVAE) and isinstance(ae, Autoencoder)
    assert (ae.spatial_factor, ae.temporal_factor, ae.latent_channels, ae.in_channels) == (2, 1, 4, 3)
    assert ae.scaling_factor == pytest.approx(0.18215)
    assert all(not p.requires_grad for p in ae.parameters())


def test_latents_are_scaled_posterior(ae):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = ae.encode(x, sample=False)
    assert z.shape == (2, 4, 8, 8) == ae.latent_shape(x.shape)
    with torch.no_grad():
        post = ae.vae.encode(x).latent_dist
        torch.testing.assert_close(z, post.mean * 0.18215)
        torch.testing.assert_close(ae.decode(z), ae.vae.decode(post.mean).sample)  # decode divides back
    # sampling draws from the posterior, reproducibly with a generator
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    zs = ae.encode(x, generator=g())
    torch.testing.assert_close(zs, ae.encode(x, generator=g()))
    assert not torch.allclose(zs, z)
    torch.testing.assert_close(zs, (post.mean + post.std * torch.randn(post.mean.shape, generator=g())) * 0.18215)


def test_videos_go_frame_by_frame(ae):
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1  # (B, T, C, H, W)
    z = ae.encode(x, sample=False)
    assert z.shape == (2, 3, 4, 8, 8) == ae.latent_shape(x.shape)
    torch.testing.assert_close(z[:, 1], ae.encode(x[:, 1], sample=False))
    assert ae.decode(z).shape == x.shape


def test_bad_inputs(ae):
    with pytest.raises(ValueError, match="expected 3 channels"):
        ae.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="multiples of 2"):
        ae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        ae.encode(torch.zeros(3, 16, 16))


def test_pipeline_folder_with_vae_subfolder(sd_dir, tmp_path):
    import shutil

    shutil.copytree(sd_dir, tmp_path / "vae")
    assert load_autoencoder(f"sd-vae:{tmp_path}").latent_channels == 4


def test_offline_errors(sd_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: calls.append(a))
    with pytest.raises(MissingWeightsError) as e:
        load_autoencoder("sd-vae:starflow-tests/no-such-vae")
    assert "download starflow-tests/no-such-vae --local-dir" in str(e.value) and "sd-vae:<DIR>" in str(e.value)
    assert calls == []
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_autoencoder(f"sd-vae:{tmp_path}/missing")
    cfg = json.loads((sd_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ValueError, match="wan:"):
        load_autoencoder(f"sd-vae:{tmp_path}")
    with pytest.raises(ValueError, match="unknown autoencoder spec"):
        load_autoencoder("vqgan:foo")
    with pytest.raises(ValueError, match="sd-vae:stabilityai/sd-vae-ft-ema"):
        load_autoencoder("stabilityai/sd-vae-ft-ema")
