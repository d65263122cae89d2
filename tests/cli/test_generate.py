"""`starflow generate`, `generate-video` and `convert` on tiny pixel-space pipelines (label-conditioned)."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from starflow import ModelConfig, StarFlow
from starflow.cli.main import main
from starflow.conditioning import load_text_encoder
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline

def run(*argv):
    return main([str(a) for a in argv])


def test_generate_png_grid_one_row_per_prompt(image_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert run("generate", "1", "2", "3", "--model", image_dir, "-n", "2", "--out", out, "--no-progress") == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.mode == "L"
    assert img.size == (2 * 4 + 3 * 2, 3 * 4 + 4 * 2)          # 2 columns (images per prompt) x 3 rows, padding 2
    single = tmp_path / "one.png"
    assert run("generate", "7", "--model", image_dir, "--out", single, "--scale", "3", "--no-progress") == 0
    assert Image.open(single).size == (12, 12)
    # same seed, same picture; another seed, another one
    again, other = tmp_path / "again.png", tmp_path / "other.png"
    run("generate", "7", "--model", image_dir, "--out", again, "--scale", "3", "--no-progress")
    run("generate", "7", "--model", image_dir, "--out", other, "--scale", "3", "--seed", "1", "--no-progress")
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(again)))
    assert not np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(other)))


def test_generate_video_gif_and_mp4(video_dir, tmp_path):
    gif = tmp_path / "v.gif"
    assert run("generate-video", "4", "--model", video_dir, "--out", gif, "--no-progress") == 0
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (4, 4)
        durations = []
        for i in range(im.n_frames):    # GIF writers merge identical neighbours, adding up their durations
            im.seek(i)
            durations.append(im.info["duration"])
        assert sum(durations) == 3 * 200                               # 3 frames at 5 fps
    first = tmp_path / "first.png"
    Image.fromarray(np.full((4, 4), 200, np.uint8), "L").save(first)
    mp4 = tmp_path / "v.mp4"
    assert run("generate-video", "4", "5", "--model", video_dir, "--out", mp4, "--frames", "5", "--fps", "10",
               "--image", first, "--jacobi-draft", "bf16", "--jacobi-draft-th", "0.005", "--no-progress") == 0
    import av
    with av.open(str(mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert c.streams.video[0].average_rate == 10
    assert len(frames) == 5 and frames[0].shape == (2 * 4 + 3 * 2, 4 + 4, 3)   # one row per prompt


def write_official(tmp_path, flow):
    args = [{"img_size": 4}, {"txt_size": 1}, {"channel_size": 1}, {"patch_size": 1}, {"channels": 48},
            {"blocks": 2}, {"layers_per_block": "1 1"}, {"head_dim": 24}, {"noise_std": 0.1}, {"rope": True},
            {"sos": True}, {"seq_order": "L2R"}, {"use_softplus": True}, {"cond_top_only": True}, {"use_final_norm": True},
            {"soft_clip": 2.0}, {"cfg": 1.0}]
    cfg = tmp_path / "official.yaml"
    cfg.write_text(yaml.safe_dump({"arguments": args}))
    ckpt = tmp_path / "official.pth"
    torch.save({**flow.state_dict(), "var": torch.ones(1)}, ckpt)
    return cfg, ckpt


def test_official_files_and_convert(tmp_path, make_tiny_flow):
    cfg, ckpt = write_official(tmp_path, make_tiny_flow(2))
    direct = tmp_path / "direct.png"
    assert run("generate", "3", "--official-config", cfg, "--checkpoint", ckpt, "--text-encoder", "labels:10",
               "--out", direct, "--no-progress") == 0
    conv = tmp_path / "converted"
    assert run("convert", "--official-config", cfg, "--checkpoint", ckpt, "--text-encoder", "labels:10",
               "--out", conv) == 0
    assert (conv / "pipeline.json").exists() and (conv / "flow" / "model.safetensors").exists()
    via = tmp_path / "via.png"
    assert run("generate", "3", "--model", conv, "--out", via, "--no-progress") == 0
    assert np.array_equal(np.asarray(Image.open(direct)), np.asarray(Image.open(via)))


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", "{img}", "--out", "{tmp}/a.png"], "give a prompt"),
    (["generate", "1", "--model", "{img}", "--out", "{tmp}/a.gif"], "images are written as"),
    (["generate", "1", "--out", "{tmp}/a.png"], "give either --model"),
    (["generate", "1", "--model", "{img}", "--aspect-ratio", "7:5", "--out", "{tmp}/a.png"], "unknown aspect ratio"),
    (["generate", "1", "--model", "{vid}", "--out", "{tmp}/a.png"], "holds a video model: use `starflow generate-video`"),
    (["generate-video", "1", "--model", "{vid}", "--out", "{tmp}/a.png"], "videos are written as"),
    (["generate-video", "1", "--model", "{vid}", "--frames", "0", "--out", "{tmp}/a.gif"], "--frames: must be >= 1"),
    (["generate", "1", "--model", "{tmp}/missing", "--out", "{tmp}/a.png"], "missing: no such directory"),
    (["generate", "1", "--model", "{tmp}", "--out", "{tmp}/a.png"], "not a pipeline directory"),
])
def test_bad_input_is_a_clear_error(image_dir, video_dir, tmp_path, capsys, argv, message):
    argv = [a.format(img=image_dir, vid=video_dir, tmp=tmp_path) for a in argv]
    assert main(argv + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_trained_folder_generates_and_converts(tmp_path, write_legacy_export, make_tiny_flow):
    from starflow.training import load_train_config
    flow = make_tiny_flow(3)
    tcfg = load_train_config(None, ["data.condition=labels", "data.noise_std=0.2", "optim.max_steps=1"])
    write_legacy_export(tmp_path / "final", flow, tcfg.to_dict())
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run("generate", "6", "--model", tmp_path / "final", "--out", a, "--no-progress") == 0
    assert run("convert", "--trained", tmp_path / "final", "--out", tmp_path / "pipe") == 0
    assert run("generate", "6", "--model", tmp_path / "pipe", "--out", b, "--no-progress") == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def _gif_frames(path):
    from starflow.data.media import load_video
    return load_video(path)


def test_generate_video_from_a_video(video_dir, tmp_path, capsys):
    src = tmp_path / "src.gif"
    assert run("generate-video", "4", "--model", video_dir, "--out", src, "--denoise", "none", "--no-progress") == 0
    same = tmp_path / "same.gif"
    assert run("generate-video", "4", "--model", video_dir, "--video", src, "--source-prompt", "4", "--denoise", "none",
               "--sampler", "sequential", "--out", same, "--no-progress") == 0
    # the flow inverted on the video and sampled back under the same prompt: the same pixels (8-bit rounding)
    a, b = _gif_frames(src)[..., 0].astype(int), _gif_frames(same)[..., 0].astype(int)
    assert a.shape == b.shape == (3, 4, 4) and np.abs(a - b).max() <= 1
    edit = tmp_path / "edit.mp4"
    assert run("generate-video", "7", "--model", video_dir, "--video", src, "--source-prompt", "4", "--out", edit,
               "--no-progress") == 0
    assert "wrote 1 video(s) of 3 frames" in capsys.readouterr().out
    import av
    with av.open(str(edit)) as c:
        assert len(list(c.decode(video=0))) == 3


@pytest.mark.parametrize("args, message", [
    (["--source-prompt", "4"], "--source-prompt goes with --video"),
    (["--video", "missing.gif"], "video not found"),
])
def test_video_to_video_bad_input(video_dir, tmp_path, capsys, args, message):
    args = [str(tmp_path / a) if a.endswith(".gif") else a for a in args]
    assert run("generate-video", "4", "--model", video_dir, "--out", tmp_path / "o.gif", *args) == 2
    assert message in capsys.readouterr().err


def test_video_to_video_too_many_frames(video_dir, tmp_path, capsys):
    # (the wrong frame size: tests/pipelines/test_video.py; this pixel model without recorded aspect ratios
    # takes any size, as its generation does)
    from starflow.data.media import save_video
    long = tmp_path / "long.gif"
    save_video(torch.rand(5, 1, 8, 8) * 2 - 1, long, fps=5)
    assert run("generate-video", "4", "--model", video_dir, "--video", long, "--out", tmp_path / "o.gif") == 2
    assert "at most the trained length" in capsys.readouterr().err
    assert not (tmp_path / "o.gif").exists()


def test_sampler_flags_reach_the_pipeline_call():
    from starflow.cli.generate import _call_kwargs
    from starflow.cli.main import build_parser
    args = build_parser().parse_args(["generate-video", "4", "--model", "m", "--jacobi-draft", "bf16",
                                      "--jacobi-draft-th", "0.005", "--jacobi-th", "0.002"])
    kw = _call_kwargs(args)
    assert (kw["jacobi_draft"], kw["jacobi_draft_th"], kw["jacobi_th"]) == ("bf16", 0.005, 0.002)
    assert "jacobi_block_size" not in kw          # unset flags leave the pipeline's defaults
    assert "jacobi_schedule" not in kw and "jacobi_window" not in kw and "denoiser_precision" not in kw
    args = build_parser().parse_args(["generate-video", "4", "--model", "m", "--denoiser-precision", "bf16"])
    assert _call_kwargs(args)["denoiser_precision"] == "bf16"
    args = build_parser().parse_args(["generate", "a digit", "--model", "m", "--jacobi-schedule", "sliding",
                                      "--jacobi-window", "48"])
    kw = _call_kwargs(args)
    assert (kw["jacobi_schedule"], kw["jacobi_window"]) == ("sliding", 48)
