"""`starflow train-autoencoder` and `starflow finetune-decoder` end to end, offline."""
import json

from starflow.autoencoders import load_autoencoder
from starflow.cli.main import main


def test_train_then_finetune(tmp_path, capsys):
    out = tmp_path / "ae"
    rc = main(["train-autoencoder", "--out", str(out), "--steps", "20", "--hidden-channels", "8,16",
               "--batch-size", "32", "--no-progress"])
    assert rc == 0
    assert f"kl:{out}" in capsys.readouterr().out
    assert load_autoencoder(f"kl:{out}").latent_channels == 4

    ft = tmp_path / "ft"
    rc = main(["finetune-decoder", "--autoencoder", f"kl:{out}", "--out", str(ft), "--steps", "5",
               "--batch-size", "16", "--noise-std", "0.3", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "L2" in text and f"kl:{ft}" in text
    log = json.loads((ft / "finetune_log.json").read_text())
    assert log["steps"] == 5 and log["noise_std"] == 0.3
    before, after = load_autoencoder(f"kl:{out}"), load_autoencoder(f"kl:{ft}")
    enc_same = all((a == b).all() for a, b in zip(before.encoder.parameters(), after.encoder.parameters()))
    dec_same = all((a == b).all() for a, b in zip(before.decoder.parameters(), after.decoder.parameters()))
    assert enc_same and not dec_same


def test_train_on_moving_digit_frames(tmp_path, capsys):
    from starflow.autoencoders.train_small import moving_digit_frames

    frames = moving_digit_frames(canvas=12, num_frames=3, num_videos=5)
    assert frames.shape == (15, 1, 12, 12) and frames.min() == -1 and frames.max() <= 1
    out = tmp_path / "ae"
    assert main(["train-autoencoder", "--data", "moving_digits", "--canvas", "12", "--num-frames", "3",
                 "--num-videos", "5", "--out", str(out), "--steps", "2", "--hidden-channels", "8,8,8",
                 "--latent-channels", "3", "--no-progress"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["num_images"] == 15                          # every frame of the 5 videos
    ae = load_autoencoder(f"kl:{out}")
    assert ae.latent_shape((1, 1, 12, 12)) == (1, 3, 3, 3)  # 4x smaller each side, 3 channels


def test_missing_weights_is_a_clear_cli_error(tmp_path, capsys):
    rc = main(["finetune-decoder", "--autoencoder", "sd-vae:starflow-tests/no-such-vae", "--out", str(tmp_path),
               "--steps", "1", "--no-progress"])
    assert rc == 2
    assert "hf download starflow-tests/no-such-vae" in capsys.readouterr().err
