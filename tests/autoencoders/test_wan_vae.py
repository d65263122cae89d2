"""Wan2.2-style AutoencoderKLWan (tiny, random): factors, causal frames, normalisation, temporal scale."""
import pytest
import torch

from starflow.autoencoders import WanVAE, autoencoder_spec_from_official, load_autoencoder

MEAN, STD = [0.1, -0.2, 0.3, 0.0], [0.5, 1.5, 2.0, 1.0]


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    d = tmp_path_factory.mktemp("tiny_wan")
    torch.manual_seed(0)
    # Wan2.2 layout in miniature: 2x2 patchify (12 channels), residual blocks, 3 downsamples (2 temporal)
    AutoencoderKLWan(base_dim=4, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                     patch_size=2, latents_mean=MEAN, latents_std=STD,
                     scale_factor_spatial=16).save_pretrained(d / "vae")  # a pipeline folder, like the hub repo
    return d


@pytest.fixture(scope="module")
def ae(wan_dir):
    return load_autoencoder(f"wan:{wan_dir}")


@pytest.fixture(scope="module")
def video():
    return torch.rand(1, 5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, T, C, H, W)


def _norm(v):
    return torch.tensor(v).view(1, -1, 1, 1, 1)


def test_factors(ae):
    assert isinstance(ae, WanVAE)
    assert (ae.spatial_factor, ae.temporal_factor, ae.latent_channels, ae.in_channels) == (16, 4, 4, 3)
    assert ae.temporal_scale == 0.6  # the official STARFlow-V default
    assert ae.latent_shape((2, 81, 3, 480, 640)) == (2, 21, 4, 30, 40)
    assert all(not p.requires_grad for p in ae.parameters())


def test_video_latents_normalised_and_temporally_scaled(ae, video):
    z = ae.encode(video, sample=False)
    assert z.shape == (1, 2, 4, 2, 2)  # 5 frames -> 1 + (5 - 1) // 4
    with torch.no_grad():
        post = ae.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist  # (B, c, T', h, w)
    ref = ((post.mean - _norm(MEAN)) / _norm(STD)).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(z[:, :1], ref[:, :1])
    torch.testing.assert_close(z[:, 1:], ref[:, 1:] * 0.6)


def test_decode_inverts_the_normalisation(ae, video):
    z = ae.encode(video, sample=False)
    x = ae.decode(z)
    assert x.shape == video.shape  # 2 latent frames -> 1 + 4 frames
    raw = (z.clone().permute(0, 2, 1, 3, 4))
    raw[:, :, 1:] /= 0.6
    with torch.no_grad():
        ref = ae.vae.decode(raw * _norm(STD) + _norm(MEAN)).sample.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(x, ref)


def test_temporal_scale_from_spec(wan_dir, ae, video):
    ae1 = load_autoencoder(f"wan:{wan_dir}:1")
    assert ae1.temporal_scale == 1.0
    z, z1 = ae.encode(video, sample=False), ae1.encode(video, sample=False)
    torch.testing.assert_close(z[:, 0], z1[:, 0])
    torch.testing.assert_close(z[:, 1:], 0.6 * z1[:, 1:])
    torch.testing.assert_close(ae.decode(z), ae1.decode(z1))


def test_images_are_one_frame_videos(ae, video):
    zi = ae.encode(video[:, 0], sample=False)
    assert zi.shape == (1, 4, 2, 2)
    torch.testing.assert_close(zi, ae.encode(video, sample=False)[:, 0])  # causal: frame 0 sees only itself
    assert ae.decode(zi).shape == (1, 3, 32, 32)


def test_sampling_adds_noise_after_normalisation(ae, video):
    g = torch.Generator().manual_seed(1)
    zs = ae.encode(video[:, 0], generator=g)
    with torch.no_grad():
        post = ae.vae.encode(video[:, 0, :, None]).latent_dist
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(1))
    ref = ((post.mean - _norm(MEAN)) / _norm(STD) + post.std * eps)[:, :, 0]  # the official Wan2.2 recipe
    torch.testing.assert_close(zs, ref)


def test_frame_count_must_be_one_plus_4k(ae):
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        ae.encode(torch.zeros(1, 4, 3, 32, 32))


def test_official_vae_values():
    assert autoencoder_spec_from_official("Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6") == \
        "wan:Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6"
    assert autoencoder_spec_from_official("Wan-AI/Wan2.2-TI2V-5B") == "wan:Wan-AI/Wan2.2-TI2V-5B-Diffusers:1"
    assert autoencoder_spec_from_official("stabilityai/sd-vae-ft-ema") == "sd-vae:stabilityai/sd-vae-ft-ema"
    assert autoencoder_spec_from_official(None) == "identity"


def test_missing_wan_names_the_vae_download():
    from starflow.autoencoders import MissingWeightsError

    with pytest.raises(MissingWeightsError, match='--include "vae/\\*"'):
        load_autoencoder("wan:starflow-tests/no-such-wan:0.6")


def test_loaded_autoencoders_record_their_spec(wan_dir, ae):
    assert ae.spec == f"wan:{wan_dir}:0.6"
    assert load_autoencoder(None).spec == "identity"
