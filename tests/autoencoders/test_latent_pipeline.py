"""The flow trains and samples in the latent space of the bundled-data autoencoder, with label conditioning."""
import torch

from starflow import ModelConfig, StarFlow
from starflow.autoencoders import digits_images, load_autoencoder, train_small_autoencoder
from starflow.conditioning import load_text_encoder
from starflow.sampling.sample import SamplerOptions, sample


def test_flow_in_small_kl_latent_space(tmp_path):
    from sklearn.datasets import load_digits

    path = train_small_autoencoder(tmp_path / "ae", steps=20, hidden_channels=(8, 16), progress=False)
    ae = load_autoencoder(f"kl:{path}")
    enc = load_text_encoder("labels:10", 1)
    x = digits_images()[:32]
    labels = torch.from_numpy(load_digits().target[:32])

    torch.manual_seed(0)
    z = ae.encode(x)  # (B, 4, 4, 4)
    cfg = ModelConfig.from_dict(dict(channel_size=ae.latent_channels, img_size=z.shape[-1], patch_size=1,
                                     channels=64, blocks=2, layers_per_block=[1], head_dim=32, txt_size=enc.length,
                                     txt_dim=enc.dim, use_softplus=True, sos=True, seq_order="L2R"))
    model = StarFlow(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = enc.encode(labels)
    losses = []
    for _ in range(15):
        xn = z + 0.3 * torch.randn_like(z)
        out = model(xn, y)
        loss_z, loss_logdet = model.loss_terms(out.z, out.logdets)
        loss = (loss_z + loss_logdet).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.eval()
    noise = torch.randn(4, *z.shape[1:])
    lat = sample(model, noise, enc.encode([1, 2, 3, 4]), enc.null(4), SamplerOptions(method="sequential", guidance=1.0))
    img = ae.decode(lat)
    assert img.shape == (4, 1, 8, 8) and torch.isfinite(img).all()
