"""The command line as an official user types it: their YAML and checkpoint, --dtype bf16, a prompts file with one
file per prompt, --frames 1, and errors worded for the command line (scaled-down official files)."""
import numpy as np
import pytest
import torch
from PIL import Image

from starflow.cli.main import build_parser, main
from starflow.data.media import to_uint8
from starflow.pipelines import StarFlowPipeline

from ..official_tiny import tiny_sd_vae, tiny_t5, tiny_wan, write_official


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official_cli")
    files = {kind: write_official(kind, root)[:2] for kind in ("image", "video")}
    t5, sd, wan = tiny_t5(root / "t5"), tiny_sd_vae(root / "sd"), tiny_wan(root / "wan")
    return {"image": [*files["image"], "--text-encoder", f"t5:{t5}", "--autoencoder", f"sd-vae:{sd}"],
            "video": [*files["video"], "--text-encoder", f"t5:{t5}", "--autoencoder", f"wan:{wan}"], "t5": t5,
            "sd": sd}


def _args(official, kind):
    cfg, ckpt, *rest = official[kind]
    return ["--official-config", str(cfg), "--checkpoint", str(ckpt), *map(str, rest)]


def test_prompts_file_one_picture_per_prompt_in_bf16(official, tmp_path):
    prompts = ["a red fox", "a corgi, 4K!", "a bowl of apples"]
    (tmp_path / "captions.txt").write_text("\n".join(prompts) + "\n")
    grid, each = tmp_path / "grid.png", tmp_path / "each"
    argv = ["generate", "--prompts-file", str(tmp_path / "captions.txt"), *_args(official, "image"), "--dtype", "bf16",
            "--out", str(grid), "--out-dir", str(each), "--no-progress"]
    assert main(argv) == 0
    files = sorted(each.glob("*.png"))
    assert [f.name for f in files] == ["0000_a-red-fox.png", "0001_a-corgi-4k.png", "0002_a-bowl-of-apples.png"]
    assert (each / "prompts.txt").read_text().splitlines() == [f"{f.name}\t{p}" for f, p in zip(files, prompts)]
    assert Image.open(grid).size == (32 + 2 * 2, 3 * 32 + 4 * 2)     # the grid as well: one row per prompt
    # each file is the picture the Python API makes for that prompt (same seed, bf16 weights)
    cfg, ckpt, _, te, _, ae = official["image"]
    pipe = StarFlowPipeline.from_official(cfg, ckpt, text_encoder_spec=te, autoencoder_spec=ae,
                                          torch_dtype=torch.bfloat16)
    ref = pipe(prompts, seed=0, output_type="pt", progress=False).images * 2 - 1
    for f, x in zip(files, ref):
        assert np.array_equal(np.asarray(Image.open(f)), to_uint8(x))
    # --out-dir alone is enough
    assert main(["generate", "a fox", *_args(official, "image"), "--out-dir", str(tmp_path / "only"),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["0000_a-fox.png", "prompts.txt"]


def test_one_frame_of_the_video_model_is_a_png(official, tmp_path):
    out = tmp_path / "still.png"
    assert main(["generate-video", "a cat", *_args(official, "video"), "--frames", "1", "--out", str(out),
                 "--out-dir", str(tmp_path / "each"), "--no-progress"]) == 0
    assert Image.open(out).size == (80, 48)                  # 16:9 (the official video script's) of the 64 px square
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["0000_a-cat.png", "prompts.txt"]
    vid = tmp_path / "clip.gif"
    assert main(["generate-video", "a cat", *_args(official, "video"), "--out", str(vid), "--no-progress"]) == 0
    assert Image.open(vid).n_frames == 5


@pytest.mark.parametrize("argv,message", [
    (["generate", "x", "{video}", "--out", "{tmp}/a.png"], "holds a video model: use `starflow generate-video`"),
    (["generate-video", "x", "{image}", "--out", "{tmp}/a.gif"], "holds an image model: use `starflow generate`"),
    (["generate", "x", "{image}", "--aspect-ratio", "16:9", "--out", "{tmp}/a.png"],
     "trained on 32x32 (height x width) pictures only, so it cannot make 16:9"),
    (["generate", "x", "{image}"], "give --out FILE"),
    (["generate-video", "x", "{video}", "--out", "{tmp}/a.png"], "videos are written as"),
])
def test_command_line_errors_name_the_command(official, tmp_path, capsys, argv, message):
    full = []
    for a in argv:
        full += _args(official, a[1:-1]) if a in ("{image}", "{video}") else [a.format(tmp=tmp_path)]
    assert main(full + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Pipeline" not in err and "Traceback" not in err


def test_narrow_text_encoder_is_named(official, tmp_path, capsys):
    narrow = tiny_t5(tmp_path / "t5-16", width=16)
    cfg, ckpt, *_ = official["image"]
    assert main(["generate", "x", "--official-config", str(cfg), "--checkpoint", str(ckpt), "--text-encoder",
                 f"t5:{narrow}", "--autoencoder", f"sd-vae:{official['sd']}", "--out", str(tmp_path / "a.png"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"text encoder t5:{narrow} gives 16-dim embeddings, but the checkpoint expects 32-dim ones" in err


def test_help_says_where_each_default_comes_from():
    sub = build_parser()._subparsers._group_actions[0].choices
    image, video = sub["generate"].format_help(), sub["generate-video"].format_help()
    for text in ("3.6", "3.5", "not the training YAML's cfg", "16 image, 32 video", "0.001", "--dtype", "bf16"):
        assert text in " ".join(image.split()), text
    for text in ("sample.py's --context_length", "--target_length 1", "16:9 as its script"):
        assert text in " ".join(video.split()), text
