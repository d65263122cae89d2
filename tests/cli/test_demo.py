"""`starflow demo` end to end on tiny training configs: trains, caches, reuses, writes and prints what it should."""
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from starflow.cli.main import main

MODEL = """
model:
  patch_size: 2
  channels: 48
  blocks: 2
  layers_per_block: [1, 1]
  head_dim: 24
  cond_top_only: true
  use_softplus: true
  seq_order: L2R
{extra}
optim:
  max_steps: 2
  batch_size: 8
log:
  progress: false
  plot: false
  sample_every: -1
  eval_max_items: 8
  eval_draws: 1
"""
DIGITS = MODEL.format(extra="data:\n  dataset: digits\n  condition: labels\n  noise_std: 0.3")
VIDEO = MODEL.format(extra="  temporal_causal: 1\n  shallow_block_local: true\n"
                           "data:\n  dataset: moving_digits\n  condition: labels\n  num_frames: 3\n"
                           "  num_videos: 8\n  canvas: 12\n  noise_std: 0.3")



@pytest.mark.slow
def test_demo_trains_caches_and_writes(tmp_path, capsys):
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    (cfgs / "digits_t2i.yaml").write_text(DIGITS)
    (cfgs / "moving_digits_t2v.yaml").write_text(VIDEO)
    argv = ["demo", "--configs", cfgs, "--cache", tmp_path / "cache", "--out", tmp_path / "demo"]
    assert main([str(a) for a in argv]) == 0
    first = capsys.readouterr().out
    assert re.search(r"^prompt accuracy: [01]\.\d\d$", first, re.M)
    assert re.search(r"^held-out bits/dim: digits \d+\.\d+, moving digits \d+\.\d+$", first, re.M)
    assert re.search(r"^classifier test accuracy: 0\.9\d\d", first, re.M)
    out = tmp_path / "demo"
    grid = Image.open(out / "digits.png")
    assert grid.format == "PNG" and grid.size == (10 * 32 + 11 * 2, 10 * 32 + 11 * 2)   # 10 rows x 10, scale 4
    for name in ("moving_digit", "moving_digit_continued", "moving_digit_long", "moving_digit_edited"):
        assert Image.open(out / f"{name}.gif").format == "GIF"
        assert (out / f"{name}.mp4").stat().st_size > 0
        assert f"wrote {out / name}.gif" in first
    # the video figures, read frame by frame, beside the image ones
    num = r"[01]\.\d\d"
    assert re.search(rf"^video prompts \(text-to-video\): digit {num}, direction {num}, both {num}, consistency {num} "
                     rf"\(200 videos\)$", first, re.M)
    assert re.search(r"real held-out videos, same reader \(its ceiling\): digit (1\.00|0\.9\d)", first)
    assert re.search(rf"^video image-to-video \(held-out first frames\): digit kept {num}", first, re.M)
    assert re.search(rf"^video long \(12 frames, sliding window\): digit kept in {num} of frames", first, re.M)
    assert re.search(rf"^video-to-video \(same motion, another digit\): new digit {num}", first, re.M)
    # second run: the cached models are reused, nothing is trained
    assert main([str(a) for a in argv]) == 0
    second = capsys.readouterr().out
    assert "training from" not in second and second.count("reusing the model trained earlier") == 2
    assert re.search(r"^prompt accuracy: ", second, re.M)


def test_demo_needs_enough_samples_and_its_configs(tmp_path, capsys):
    assert main(["demo", "--samples-per-prompt", "5", "--configs", str(tmp_path)]) == 2
    assert "must be >= 20" in capsys.readouterr().err
    assert main(["demo", "--configs", str(tmp_path)]) == 2
    assert "digits_t2i.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_latent_video_config_gets_its_autoencoder_trained_and_cached(tmp_path, capsys, monkeypatch):
    # a moving-digits config that names a small KL autoencoder: the demo trains one on the config's frames
    # (into its cache), points data.autoencoder at it, and reuses both next time
    import starflow.cli.demo as demo

    monkeypatch.setattr(demo, "VIDEO_AE", dict(steps=2, batch_size=8, latent_channels=3, hidden_channels=(8, 8),
                                               layout="patch", patch=2))
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    (cfgs / "digits_t2i.yaml").write_text(DIGITS)
    latent = VIDEO.replace("patch_size: 2", "patch_size: 1").replace(
        "  noise_std: 0.3", "  noise_std: 0.3\n  autoencoder: kl:nowhere")
    (cfgs / "moving_digits_t2v.yaml").write_text(latent)
    argv = [str(a) for a in ["demo", "--configs", cfgs, "--cache", tmp_path / "cache", "--out", tmp_path / "demo"]]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "[autoencoder] training the small KL autoencoder" in first
    assert re.search(r"^held-out bits/dim: digits \d+\.\d+, moving digits \d+\.\d+ \(per latent dimension\)$",
                     first, re.M)
    (ae,) = (tmp_path / "cache").glob("moving_digits_ae-*")
    trained = json.loads(next((tmp_path / "cache").glob("moving_digits_t2v-*/demo.json")).read_text())["model_dir"]
    assert json.loads((Path(trained) / "training.json").read_text())["train"]["data"]["autoencoder"] == f"kl:{ae}"
    # decoded back to 12x12 pixel frames (not 6x6 latents), scale 4: 40 labelled videos, a column per direction
    from starflow.data.media import load_video
    grid = load_video(tmp_path / "demo" / "moving_digit.gif")
    assert grid.shape[0] == 3 and grid.shape[2] >= 4 * 12 * 4 and grid.shape[1] >= 10 * 12 * 4
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "reusing the autoencoder trained earlier" in second and "training" not in second.replace(
        "trained", "")
