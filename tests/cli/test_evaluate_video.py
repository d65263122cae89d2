"""`starflow evaluate-video` on a tiny moving-digits model trained for two steps: every part runs, prints its
line and writes its JSON; bad input is a clear error."""
import json
import re

import pytest

from starflow.cli.main import main
from starflow.training import load_train_config, train


@pytest.fixture(scope="module")
def tiny_video_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("evv")
    cfg = load_train_config(None, [
        "model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1", "model.patch_size=4",
        "model.rope=true", "model.temporal_causal=1", "model.shallow_block_local=true", "model.cond_top_only=true",
        "model.seq_order=L2R", "data.dataset=moving_digits", "data.num_videos=16", "data.num_frames=3",
        "data.condition=labels", "data.noise_std=0.1", "data.motion=wrap", "data.align=true", "optim.max_steps=2",
        "optim.warmup_steps=1", "optim.batch_size=4", "optim.num_threads=1", "optim.precision=fp32",
        "log.progress=false", "log.sample_every=-1", "log.plot=false", "log.eval_draws=1", f"log.out_dir={out}"])
    return train(cfg).checkpoint_dir


def test_every_part_prints_and_writes_its_figures(tiny_video_model, tmp_path, capsys):
    js = tmp_path / "video.json"
    assert main(["evaluate-video", "--model", str(tiny_video_model), "--per-prompt", "1", "--i2v", "2", "--long", "1",
                 "--long-factor", "2", "--v2v", "2", "--json", str(js), "--no-progress"]) == 0
    out = capsys.readouterr().out
    num = r"[01]\.\d\d"
    assert re.search(rf"^video prompts \(text-to-video\): digit {num}, direction {num}, both {num}, "
                     rf"consistency {num} \(40 videos\)$", out, re.M)
    # the reader on real held-out videos: its ceiling
    assert re.search(r"real held-out videos, same reader \(its ceiling\): digit (1\.00|0\.9\d), direction 1\.00", out)
    assert re.search(rf"^video image-to-video \(held-out first frames\): digit kept {num}, direction {num}", out, re.M)
    assert re.search(rf"^video long \(6 frames, sliding window\): digit kept in {num} of frames", out, re.M)
    assert re.search(rf"^video-to-video \(same motion, another digit\): new digit {num}, positions \d+\.\d\d px", out,
                     re.M)
    r = json.loads(js.read_text())
    assert r["t2v"]["num_videos"] == 40 and r["i2v"]["num_videos"] == 2 and r["long_frames"] == 6
    assert r["v2v_videos"] == 2 and set(r["seconds"]) == {"t2v", "i2v", "long", "v2v"}
    assert r["real"]["direction"] == 1.0


def test_parts_can_be_skipped(tiny_video_model, capsys):
    assert main(["evaluate-video", "--model", str(tiny_video_model), "--per-prompt", "1", "--i2v", "0", "--long", "0",
                 "--v2v", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "text-to-video" in out and "image-to-video" not in out and "long" not in out and "video-to-video" not in out


@pytest.mark.parametrize("args, message", [
    (["--per-prompt", "0"], "--per-prompt must be >= 1"),
    (["--v2v", "-1"], "--v2v must be >= 0"),
])
def test_bad_arguments(tiny_video_model, capsys, args, message):
    assert main(["evaluate-video", "--model", str(tiny_video_model), *args]) == 2
    assert message in capsys.readouterr().err


def test_not_a_moving_digits_model(tmp_path, capsys):
    assert main(["evaluate-video", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["evaluate-video", "--model", str(tmp_path)]) == 2
    assert "not a moving-digits model" in capsys.readouterr().err
