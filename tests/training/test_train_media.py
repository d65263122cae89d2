"""Text-to-video on moving digits through the CLI; an image folder with aspect buckets in latent space."""
import pytest
import json

import numpy as np
import torch
from PIL import Image

from starflow.cli.main import main
from starflow.training import load_trained, train


@pytest.mark.slow
def test_cli_text_to_video_moving_digits(tmp_path, tiny_args, capsys):
    cfg = tmp_path / "t2v.yaml"
    cfg.write_text("data:\n  dataset: moving_digits\n  canvas: 12\n  num_frames: 3\n  num_videos: 40\n"
                   "  condition: text\n  text_encoder: minilm\n  txt_size: 8\n  noise_std: 0.1\n")
    args = tiny_args("t2v", "optim.max_steps=2", "log.sample_every=2", "log.sample_count=2",
                     "data.dequantize=false", "data.condition=text", "optim.batch_size=4")
    args = [a for a in args if not a.startswith("data.dataset")]
    assert main(["train", "--config", str(cfg), *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and out["test_bpd"] is not None
    info = json.loads((tmp_path / "t2v" / "final" / "training.json").read_text())
    assert info["conditioning"]["spec"] == "minilm" and info["conditioning"]["dim"] == 384
    model, tcfg = load_trained(out["model_dir"])
    assert model.config.txt_size == 8 and tcfg.data.dataset == "moving_digits"
    grid = Image.open(tmp_path / "t2v" / "samples" / "step_00000002.png")
    assert grid.size[0] > grid.size[1]  # rows of 3 frames


class HalvingAE:
    """A stand-in autoencoder with the interface of starflow.autoencoders: 2x average-pool encoder, nearest-neighbour
    decoder (fast, and exact to check)."""
    spatial_factor, temporal_factor, latent_channels = 2, 1, 3

    def encode(self, x, sample=True, generator=None):
        return torch.nn.functional.avg_pool2d(x, 2)

    def decode(self, z):
        return z.repeat_interleave(2, -1).repeat_interleave(2, -2)

    def latent_shape(self, shape):
        return (*shape[:-2], shape[-2] // 2, shape[-1] // 2)


def test_image_folder_buckets_in_latent_space(tmp_path, tiny_args, monkeypatch):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate([(32, 16), (16, 16), (32, 17), (15, 16)]):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    import starflow.training.trainer as trainer_mod
    monkeypatch.setattr(trainer_mod, "load_autoencoder_for", lambda data, device: HalvingAE())
    args = tiny_args("folder", "optim.max_steps=3", "optim.batch_size=2", "data.dequantize=false",
                     "data.noise_std=0.3", "log.sample_every=3", "log.sample_count=2", "model.rope=True")
    args = [a for a in args if not a.startswith("data.dataset")] + [
        "data.dataset=image_folder", f"data.path={tmp_path / 'imgs'}", "data.image_size=8",
        "data.aspect_ratios=[1:1, 2:1]", "data.autoencoder=halving"]
    from starflow.training import load_train_config
    r = train(load_train_config(None, args))
    assert r.steps == 3 and r.test_bpd is None and r.model.config.img_size == 4
    assert r.model.config.channel_size == 3 and r.model.config.txt_dim == 3  # 2 classes + null
    assert (tmp_path / "folder" / "samples" / "step_00000003.png").exists()
