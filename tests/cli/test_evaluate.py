"""`starflow evaluate` on a tiny trained digits model: the figures, their settings, resuming, two processes."""
import json
import os
import socket
import subprocess
import sys

import pytest

from starflow.cli.main import main
from starflow.evaluation.inception import INCEPTION_FILE, INCEPTION_URL

from ..evaluation.tiny_nets import write_tiny_inception

@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return write_tiny_inception(tmp_path_factory.mktemp("inception"))


def _evaluate(capsys, *argv):
    rc = main(["evaluate", *map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bpd_is_the_training_runs_figure_with_every_setting(trained_digits, tmp_path, capsys):
    folder, train_bpd = trained_digits
    rc, out, _ = _evaluate(capsys, "bpd", "--model", folder, "--draws", 2, "--max-items", 24, "--batch-size", 7,
                           "--out", tmp_path / "r.json")
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    r = report["results"]["bpd"]
    assert r["bpd"] == pytest.approx(train_bpd, abs=1e-6)
    assert (r["items"], r["draws"], r["unit"], r["processes"]) == (24, 2, "bits/dim", 1)
    assert r["protocol"]["input_transform"]["kind"] == "gaussianize"
    assert report["data"]["dataset"] == "digits" and report["data"]["split"] == "test"
    assert report["model"]["source"] == "trained" and report["model"]["weights"]["bytes"] > 0
    assert "bits/dim" in out and f"{r['bpd']:.4f}" in out and "24 items x 2 draws" in out
    assert (tmp_path / "r.work" / "bpd_partial.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bpd_under_torchrun_equals_one_process(trained_digits, tmp_path, capsys):
    folder, _ = trained_digits
    common = ["bpd", "--model", str(folder), "--draws", "2", "--max-items", "23", "--batch-size", "6"]
    assert _evaluate(capsys, *common, "--out", tmp_path / "one.json")[0] == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "starflow.cli.main", "evaluate", *common,
           "--out", str(tmp_path / "two.json"), "--no-progress"]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())["results"]["bpd"]
    two = json.loads((tmp_path / "two.json").read_text())["results"]["bpd"]
    assert two["processes"] == 2 and two["items"] == 23
    assert two["bpd"] == pytest.approx(one["bpd"], abs=1e-9)
    assert two["stderr"] == pytest.approx(one["stderr"], abs=1e-9)
    assert p.stdout.count("wrote ") == 1                                 # one report, from rank 0


def test_fid_kid_and_prompt_accuracy_record_their_settings_and_resume(trained_digits, inception, tmp_path, capsys):
    folder, _ = trained_digits
    args = ["fid", "kid", "prompt-accuracy", "--model", folder, "--inception", inception, "--num-samples", 12,
            "--batch-size", 6, "--samples-per-prompt", 2, "--seed", 3, "--guidance", 1.5, "--kid-subsets", 10,
            "--out", tmp_path / "r.json"]
    rc, out, _ = _evaluate(capsys, *args)
    assert rc == 0
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    fid, kid, acc = res["fid"], res["kid"], res["prompt-accuracy"]
    assert fid["fid"] > 0 and fid["num_generated"] == 12 and fid["num_reference"] == 297
    s = fid["sampling"]
    assert (s["num_samples"], s["seed"], s["guidance"], s["method"], s["batch_size"]) == (12, 3, 1.5, "jacobi", 6)
    assert fid["inception"].endswith(INCEPTION_FILE) and fid["feature_dim"] == 16
    assert kid["subset_size"] == 12 and kid["subsets"] == 10 and kid["kid_std"] >= 0
    assert 0 <= acc["accuracy"] <= 1 and acc["num_samples"] == 20 and acc["guidance"] == 1.5
    assert acc["classifier_test_accuracy"] > 0.9
    for name in ("FID", "KID", "prompt accuracy"):
        assert name in out
    samples = tmp_path / "r.work" / "samples"
    pngs = sorted(samples.glob("*.png"))
    assert len(pngs) == 12 and (samples / "manifest.json").exists()
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["prompts"][:3] == ["0", "1", "2"]                   # classes in turn
    # a second run reuses the samples (and features) and gives the same figures
    stamps = [p.stat().st_mtime_ns for p in pngs]
    pngs[-1].unlink()                                                    # as if stopped in the last batch
    assert _evaluate(capsys, *args)[0] == 0
    again = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [p.stat().st_mtime_ns for p in pngs[:6]] == stamps[:6]
    assert again["fid"]["fid"] == pytest.approx(fid["fid"], abs=1e-9)
    assert again["kid"]["kid_mean"] == pytest.approx(kid["kid_mean"], abs=1e-12)
    # other settings in the same folder are refused, not mixed in
    rc, _, err = _evaluate(capsys, *[a if a != 1.5 else 2.5 for a in args])
    assert rc == 2 and "other settings" in err and "guidance" in err


def test_missing_inception_is_a_clear_error_before_any_sampling(trained_digits, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STARFLOW_INCEPTION", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc, _, err = _evaluate(capsys, "fid", "--model", trained_digits[0], "--num-samples", 4,
                           "--out", tmp_path / "r.json")
    assert rc == 2
    assert INCEPTION_FILE in err and INCEPTION_URL in err and "--inception" in err and "Traceback" not in err
    assert not (tmp_path / "r.work" / "samples").exists()


def test_bad_requests_are_clear_errors(trained_digits, tmp_path, capsys):
    folder, _ = trained_digits
    rc, _, err = _evaluate(capsys, "clip-score", "--model", folder, "--clip", tmp_path, "--out", tmp_path / "r.json")
    assert rc == 2 and "text prompts" in err
    rc, _, err = _evaluate(capsys, "bpd", "--model", folder, "--data-set", "imagesize=4", "--out", tmp_path / "r.json")
    assert rc == 2 and "imagesize" in err
    rc, _, err = _evaluate(capsys, "bpd", "--out", tmp_path / "r.json")
    assert rc == 2 and "--model" in err


def test_video_model_bpd_equals_its_training_figure_prompt_accuracy_reads_frames_fid_is_refused(tmp_path, capsys):
    from starflow.training import load_train_config, train

    cfg = load_train_config(None, [
        "model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1", "model.patch_size=4",
        "model.rope=true", "model.temporal_causal=1", "model.seq_order=L2R", "data.dataset=moving_digits", "data.num_videos=16",
        "data.num_frames=4", "data.condition=labels", "data.noise_std=0.1", "optim.max_steps=2",
        "optim.warmup_steps=1", "optim.batch_size=4", "optim.num_threads=1", "optim.precision=fp32",
        "log.progress=false", "log.sample_every=-1", "log.plot=false", "log.eval_draws=2",
        f"log.out_dir={tmp_path / 'run'}"])
    result = train(cfg)
    rc, out, _ = _evaluate(capsys, "bpd", "--model", result.checkpoint_dir, "--draws", 2, "--out", tmp_path / "r.json")
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())["results"]["bpd"]
    assert r["items"] == 2 and r["bpd"] == pytest.approx(result.test_bpd, abs=1e-6)   # 16 // 8 held-out videos
    assert r["protocol"]["noise"]["sigma"] == 0.1
    rc, _, err = _evaluate(capsys, "prompt-accuracy", "--model", result.checkpoint_dir, "--samples-per-prompt", 1,
                           "--out", tmp_path / "p.json")
    assert rc == 0                                      # the moving-digits frame reader: 40 prompts x 1 video
    p = json.loads((tmp_path / "p.json").read_text())["results"]["prompt-accuracy"]
    assert p["num_samples"] == 40 and 0 <= p["accuracy"] <= 1
    rc, _, err = _evaluate(capsys, "fid", "--model", result.checkpoint_dir, "--out", tmp_path / "f.json")
    assert rc == 2 and "image model" in err


def test_latent_model_reports_bits_per_latent_dimension_equal_to_training(tmp_path, capsys):
    import torch

    from starflow.autoencoders.small_kl import SmallKLAutoencoder, SmallKLConfig

    from ..evaluation.tiny_nets import train_tiny_digits

    torch.manual_seed(0)
    ae = SmallKLAutoencoder(SmallKLConfig(in_channels=1, latent_channels=3, hidden_channels=[8, 16]))
    folder = ae.save_pretrained(tmp_path / "ae")
    model, train_bpd = train_tiny_digits(tmp_path / "run", "data.dequantize=false", "data.gaussianize=false",
                                         "data.noise_std=0.3", f"data.autoencoder=kl:{folder}", "log.eval_max_items=10")
    rc, out, _ = _evaluate(capsys, "bpd", "--model", model, "--draws", 2, "--max-items", 10, "--batch-size", 4,
                           "--out", tmp_path / "r.json")
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())["results"]["bpd"]
    assert r["bpd"] == pytest.approx(train_bpd, abs=1e-6)
    assert r["unit"] == "bits per latent dimension" and r["protocol"]["space"] == "latent"
    assert "bits/latent dim" in out and "NOT comparable" in out
