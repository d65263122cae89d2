"""The small KL autoencoder trained on the bundled digits, saved and loaded back through load_autoencoder."""
import json

import pytest
import torch

from starflow.autoencoders import (SmallKLAutoencoder, SmallKLConfig, digits_images, load_autoencoder,
                                   reconstruction_mse, train_small_autoencoder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("small_kl")
    path = train_small_autoencoder(out, steps=60, seed=0, hidden_channels=(16, 32), batch_size=64, progress=False)
    return path


def test_digits_scaled_to_unit_range():
    x = digits_images()
    assert x.shape == (1797, 1, 8, 8)
    assert x.min() == -1.0 and x.max() == 1.0


def test_training_saves_a_loadable_autoencoder(trained):
    assert {p.name for p in trained.iterdir()} >= {"config.json", "model.safetensors", "train_log.json"}
    ae = load_autoencoder(f"kl:{trained}")
    assert isinstance(ae, SmallKLAutoencoder)
    assert (ae.spatial_factor, ae.temporal_factor, ae.latent_channels, ae.in_channels) == (2, 1, 4, 1)
    assert all(not p.requires_grad for p in ae.parameters())
    x = digits_images()[:16]
    z = ae.encode(x)
    assert z.shape == (16, 4, 4, 4) == ae.latent_shape(x.shape)
    assert ae.decode(z).shape == x.shape
    v = torch.rand(2, 3, 1, 8, 8) * 2 - 1
    assert ae.encode(v).shape == (2, 3, 4, 4, 4)


def test_training_learns_to_reconstruct(trained):
    ae = load_autoencoder(f"kl:{trained}")
    x = digits_images()
    log = json.loads((trained / "train_log.json").read_text())
    mse = reconstruction_mse(ae, x)
    assert mse == pytest.approx(log["recon_mse"], rel=1e-4)
    assert mse < 0.25 * x.var().item()  # far better than predicting the mean image
    untrained = SmallKLAutoencoder(SmallKLConfig(hidden_channels=[16, 32])).eval()
    assert reconstruction_mse(untrained, x) > 2 * mse


def test_latents_are_normalised(trained):
    ae = load_autoencoder(f"kl:{trained}")
    z = ae.encode(digits_images(), generator=torch.Generator().manual_seed(5))
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["scaling_factor"] != 1.0 and cfg["type"] == "starflow-small-kl"


def test_save_load_round_trip_and_seeds(trained, tmp_path):
    ae = load_autoencoder(f"kl:{trained}")
    ae2 = SmallKLAutoencoder.from_pretrained(ae.save_pretrained(tmp_path / "copy"))
    x = digits_images()[:8]
    torch.testing.assert_close(ae2.encode(x, sample=False), ae.encode(x, sample=False))
    a = train_small_autoencoder(tmp_path / "a", steps=3, seed=7, hidden_channels=(8, 16), progress=False)
    b = train_small_autoencoder(tmp_path / "b", steps=3, seed=7, hidden_channels=(8, 16), progress=False)
    c = train_small_autoencoder(tmp_path / "c", steps=3, seed=8, hidden_channels=(8, 16), progress=False)
    za, zb, zc = (load_autoencoder(f"kl:{p}").encode(x, sample=False) for p in (a, b, c))
    assert torch.equal(za, zb) and not torch.allclose(za, zc)


def test_bad_configs_and_dirs(tmp_path):
    with pytest.raises(ValueError, match="unknown key.s. depth"):
        SmallKLConfig.from_dict({"latent_channels": 4, "depth": 3})
    with pytest.raises(FileNotFoundError, match="train-autoencoder"):
        load_autoencoder(f"kl:{tmp_path}")
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a starflow small KL"):
        load_autoencoder(f"kl:{tmp_path}")
    with pytest.raises(ValueError, match="multiple of the spatial factor"):
        train_small_autoencoder(tmp_path / "x", steps=1, images=torch.zeros(4, 1, 7, 7), progress=False)


def test_identity_autoencoder():
    ae = load_autoencoder(None)
    x = torch.randn(2, 3, 4, 4)
    assert ae.encode(x) is x and ae.decode(x) is x
    assert (ae.spatial_factor, ae.temporal_factor) == (1, 1)
    assert ae.latent_shape((2, 5, 3, 4, 4)) == (2, 5, 3, 4, 4)
    one = load_autoencoder("identity:1")
    assert one.latent_channels == one.in_channels == 1
    with pytest.raises(ValueError, match="expected 1 channels"):
        one.encode(x)


def test_patch_layout_moves_latents_by_whole_tokens(tmp_path):
    # one token per 4x4 pixels, computed from those pixels alone: a picture moved by 4 pixels has its latents
    # moved by exactly one token (away from the edge it came in from); saved and loaded with its layout
    from starflow.autoencoders.train_small import moving_digit_frames

    frames = moving_digit_frames(canvas=16, num_frames=3, num_videos=8, speed=4, start="wall", align=True)
    path = train_small_autoencoder(tmp_path / "p", steps=3, batch_size=8, latent_channels=2, hidden_channels=(8, 8),
                                   images=frames, layout="patch", patch=4, progress=False)
    ae = load_autoencoder(f"kl:{path}")
    assert ae.config.layout == "patch" and ae.spatial_factor == 4 and ae.latent_shape((1, 1, 16, 16)) == (1, 2, 4, 4)
    x = frames[:1]
    moved = torch.roll(x, 4, dims=-1)
    moved[..., :4] = -1                                              # blank where it came from
    za, zb = ae.encode(x, sample=False), ae.encode(moved, sample=False)
    torch.testing.assert_close(zb[..., 1:], za[..., :-1])
    assert ae.decode(za).shape == x.shape
    with pytest.raises(ValueError, match="layout must be 'conv' or 'patch'"):
        SmallKLConfig(layout="pixel")
