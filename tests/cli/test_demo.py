"""`starflow demo` end to end on tiny training configs: trains, caches, reuses, writes and prints what it should."""
import re

from PIL import Image

from starflow.cli.main import main

MODEL = """
model:
  patch_size: 2
  channels: 48
  blocks: 2
  layers_per_block: [1, 1]
  head_dim: 24
  cond_top_only: 1
  use_softplus: 1
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
VIDEO = MODEL.format(extra="  temporal_causal: 1\n  shallow_block_local: 1\n"
                           "data:\n  dataset: moving_digits\n  condition: labels\n  num_frames: 3\n"
                           "  num_videos: 8\n  canvas: 12\n  noise_std: 0.3")



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
    for name in ("moving_digit", "moving_digit_continued"):
        assert Image.open(out / f"{name}.gif").format == "GIF"
        assert (out / f"{name}.mp4").stat().st_size > 0
        assert f"wrote {out / name}.gif" in first
    # second run: the cached models are reused, nothing is trained
    assert main([str(a) for a in argv]) == 0
    second = capsys.readouterr().out
    assert "training from" not in second and second.count("reusing the model trained earlier") == 2
    assert re.search(r"^prompt accuracy: ", second, re.M)


def test_demo_needs_enough_samples_and_its_configs(tmp_path, capsys):
    assert main(["demo", "--samples-per-prompt", "5", "--configs", str(tmp_path)]) == 1
    assert "must be >= 20" in capsys.readouterr().err
    assert main(["demo", "--configs", str(tmp_path)]) == 1
    assert "digits_t2i.yaml" in capsys.readouterr().err
