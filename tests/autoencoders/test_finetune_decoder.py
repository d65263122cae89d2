"""Decoder fine-tuning on noisy latents (L2, plus LPIPS when its weights are on disk)."""
import pytest
import torch

from starflow.autoencoders import (LPIPS, FinetuneConfig, SmallKLAutoencoder, SmallKLConfig, digits_images,
                                   finetune_decoder, find_perceptual_weights, load_autoencoder)
from starflow.autoencoders.perceptual import _STAGES, VGG_CHANNELS


def _noisy_l2(ae, x, sigma):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        z = ae.encode(x, generator=g)
        z = z + sigma * torch.randn(z.shape, generator=g)
        return torch.nn.functional.mse_loss(ae.decode(z), x).item()


def test_finetune_trains_only_the_decoder_and_lowers_noisy_loss():
    torch.manual_seed(0)
    ae = SmallKLAutoencoder(SmallKLConfig(hidden_channels=[8, 16])).freeze()
    x = digits_images()[:256]
    enc_before = {k: v.clone() for k, v in ae.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in ae.decoder.state_dict().items()}
    before = _noisy_l2(ae, x, 0.3)
    hist = finetune_decoder(ae, x, FinetuneConfig(noise_std=0.3, steps=40, batch_size=64, lr=3e-3), progress=False)
    assert len(hist["l2"]) == 40 and all(v == 0 for v in hist["perceptual"])
    assert _noisy_l2(ae, x, 0.3) < 0.7 * before
    assert all(torch.equal(v, ae.encoder.state_dict()[k]) for k, v in enc_before.items())
    assert any(not torch.equal(v, ae.decoder.state_dict()[k]) for k, v in dec_before.items())
    assert all(not p.requires_grad for p in ae.parameters())  # frozen again


def test_finetune_rejects_bad_input():
    with pytest.raises(NotImplementedError, match="no trainable decoder"):
        finetune_decoder(load_autoencoder("identity"), torch.zeros(2, 3, 8, 8), FinetuneConfig(steps=1))
    with pytest.raises(ValueError, match="unknown key.s. noise"):
        FinetuneConfig.from_dict({"noise": 0.3})
    with pytest.raises(ValueError, match="noise_std"):
        FinetuneConfig(noise_std=-1).validate()


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    """Random weights written in the torchvision VGG16 / LPIPS v0.1 key layouts (the real ones are not bundled)."""
    d = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    vgg, idx = {}, 0
    for s, (cin, cout, n) in enumerate(_STAGES):
        idx += s > 0  # max-pool
        for j in range(n):
            c_in = cin if j == 0 else cout
            vgg[f"features.{idx}.weight"] = torch.randn(cout, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
            vgg[f"features.{idx}.bias"] = torch.zeros(cout)
            idx += 2  # conv + relu
    vgg["classifier.0.weight"] = torch.zeros(1)  # ignored
    torch.save(vgg, d / "vgg16-397923af.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(VGG_CHANNELS)},
               d / "vgg.pth")
    return d


def test_lpips_loads_local_weights(lpips_dir):
    lp = LPIPS.from_dir(find_perceptual_weights(lpips_dir))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    y = x + 0.3 * torch.randn_like(x)
    assert torch.allclose(lp(x, x), torch.zeros(2))
    d = lp(x, y.requires_grad_(True))
    assert d.shape == (2,) and torch.all(d > 0)
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_perceptual_weights_lookup(tmp_path, monkeypatch, lpips_dir):
    import starflow.autoencoders.perceptual as P

    monkeypatch.delenv("STARFLOW_PERCEPTUAL_DIR", raising=False)
    monkeypatch.setattr(P, "_DEFAULT_DIR", tmp_path / "none")
    assert find_perceptual_weights(None) is None  # L2 only
    monkeypatch.setenv("STARFLOW_PERCEPTUAL_DIR", str(lpips_dir))
    assert find_perceptual_weights(None) == lpips_dir
    with pytest.raises(FileNotFoundError, match="VGG16"):
        find_perceptual_weights(tmp_path)


def test_finetune_with_perceptual_loss(lpips_dir):
    torch.manual_seed(0)
    ae = SmallKLAutoencoder(SmallKLConfig(hidden_channels=[8, 16])).freeze()
    hist = finetune_decoder(ae, digits_images()[:32], FinetuneConfig(steps=2, batch_size=4),
                            perceptual=LPIPS.from_dir(lpips_dir), progress=False)
    assert all(v > 0 for v in hist["perceptual"])
    assert hist["loss"][0] == pytest.approx(hist["l2"][0] + hist["perceptual"][0], rel=1e-5)
