"""Issue 14, "raw tracebacks for user mistakes": every bad input the probe found, through the command line.

Each case must end with exit code 2 and one line naming the problem, no traceback, and nothing written where
the output would have gone. `{...}` in an argument is a file or folder made once for the whole table."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from starflow import ModelConfig, StarFlow
from starflow.cli.main import main
from starflow.conditioning import load_text_encoder
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline

from .faults import train_argv

TINY = dict(channel_size=1, img_size=4, patch_size=1, channels=48, blocks=2, layers_per_block=[1, 1], head_dim=24,
            rope=True, sos=True, txt_size=1, txt_dim=11, cond_top_only=True, use_softplus=True, use_final_norm=True,
            soft_clip=2.0, seq_order="L2R")
OFFICIAL = [{"img_size": 4}, {"txt_size": 1}, {"channel_size": 1}, {"patch_size": 1}, {"channels": 48}, {"blocks": 2},
            {"layers_per_block": "1 1"}, {"head_dim": 24}, {"noise_std": 0.1}, {"rope": True}, {"sos": True},
            {"seq_order": "L2R"}, {"use_softplus": True}, {"cond_top_only": True}, {"use_final_norm": True},
            {"soft_clip": 2.0}, {"cfg": 1.0}]


def _flow(seed=0, **overrides) -> StarFlow:
    torch.manual_seed(seed)
    return StarFlow(ModelConfig.from_dict({**TINY, **overrides})).eval()


def _truncate(path: Path, keep: float = 0.4) -> None:
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])


class Evil:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def world(tmp_path_factory, reference_run) -> dict[str, Path]:
    """Every file and folder the table refers to."""
    t = tmp_path_factory.mktemp("world")
    w = {"tmp": t, "run": reference_run}
    labels = load_text_encoder("labels:10", 1)
    w["img"] = StarFlowPipeline(_flow(), labels, None, autoencoder_spec="identity",
                                defaults=dict(noise_std=0.1)).save_pretrained(t / "img")
    w["vid"] = StarFlowVideoPipeline(_flow(1, temporal_causal=1, shallow_block_local=True), labels, None,
                                     autoencoder_spec="identity",
                                     defaults=dict(noise_std=0.1, num_frames=3, fps=5)).save_pretrained(t / "vid")
    w["trunc_pipe"] = Path(shutil.copytree(w["img"], t / "trunc_pipe"))
    _truncate(w["trunc_pipe"] / "flow" / "model.safetensors")
    v1 = t / "v1_pipe"                   # a version-1 folder: the model in pipeline.json, weights in flow.safetensors
    v1.mkdir()
    (v1 / "pipeline.json").write_text(json.dumps({
        "format": "starflow-pipeline", "version": 1, "kind": "image", "text_encoder": "labels:10",
        "autoencoder": "identity", "defaults": {"noise_std": 0.1}, "model": TINY}))
    shutil.copy(w["img"] / "flow" / "model.safetensors", v1 / "flow.safetensors")
    _truncate(v1 / "flow.safetensors")
    w["v1_pipe"] = v1
    (t / "official.yaml").write_text(yaml.safe_dump({"arguments": OFFICIAL}))
    w["yaml"] = t / "official.yaml"
    torch.save(_flow(2).state_dict(), t / "good.pth")
    shutil.copy(t / "good.pth", t / "trunc.pth")
    _truncate(t / "trunc.pth")
    (t / "empty.pth").write_bytes(b"")
    torch.save({"w": Evil(t / "pwned")}, t / "evil.pth")
    for name in ("trunc", "empty", "evil"):
        w[f"{name}_pth"] = t / f"{name}.pth"
    (t / "config").mkdir()
    (t / "config" / "empty.yaml").write_text("# all on the command line\n")
    w["cfg"], w["cfg_dir"] = t / "config" / "empty.yaml", t / "config"
    (t / "bad.yaml").write_text("optim:\n  lr: [1e-3\n  max_steps: 3\n")
    w["bad_yaml"] = t / "bad.yaml"
    imgs = t / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(imgs / f"{i}.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")
    w["imgs"] = imgs
    caps = t / "caps"
    caps.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(caps / "x.png")
    (caps / "x.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    w["caps"] = caps
    w["changed"] = Path(shutil.copytree(reference_run, t / "changed"))     # resumed with other model settings
    w["unfinished"] = Path(shutil.copytree(reference_run, t / "unfinished"))
    shutil.rmtree(w["unfinished"] / "final")
    for name in ("exists.png", "exists.gif"):
        (t / name).write_bytes(b"keep me")
    (t / "folder.png").mkdir()
    (t / "folder.gif").mkdir()
    (t / "others").mkdir()
    (t / "others" / "notes.txt").write_text("not a pipeline")
    w["pipe_copy"] = Path(shutil.copytree(w["img"], t / "pipe_copy"))
    w["ro"] = Path("/proc/starflow-readonly") if os.geteuid() == 0 else t / "ro"   # root writes through chmod
    if os.geteuid() != 0:
        w["ro"].mkdir()
        w["ro"].chmod(0o555)
    return w


GEN = ["generate", "1", "--model", "{img}", "--no-progress"]
VID = ["generate-video", "1", "--model", "{vid}", "--no-progress"]
OFF = ["generate", "1", "--official-config", "{yaml}", "--text-encoder", "labels:10", "--out", "{new}/a.png",
       "--no-progress", "--checkpoint"]
IMG_DATA = ["data.dataset=image_folder", "data.path={imgs}", "data.image_size=8", "data.channels=1",
            "data.condition=none", "data.dequantize=true"]

CASES = [
    # broken or foreign model files
    ("truncated-pipeline-weights", ["generate", "1", "--model", "{trunc_pipe}", "--out", "{new}/a.png"],
     "model.safetensors: not a complete safetensors weights file"),
    ("truncated-v1-flow-safetensors", ["generate", "1", "--model", "{v1_pipe}", "--out", "{new}/a.png"],
     "flow.safetensors: not a complete safetensors weights file"),
    ("truncated-pth", OFF + ["{trunc_pth}"], "trunc.pth: not a complete PyTorch weights file"),
    ("empty-pth", OFF + ["{empty_pth}"], "empty.pth: the file is empty (0 bytes)"),
    ("malicious-pth", OFF + ["{evil_pth}"], "evil.pth: it holds Python objects other than tensors"),
    ("run-folder-as-model", GEN + ["--model", "{run}", "--out", "{new}/a.png"],
     "is a training run folder: its trained model is"),
    ("unfinished-run-as-model", GEN + ["--model", "{unfinished}", "--out", "{new}/a.png"],
     "is a training run folder without its final/ model yet"),
    ("resume-another-model", ["train", "--config", "{cfg}", "--resume", "TINY_RUN", "model.channels=64"],
     "was saved by another model than this config builds (model.channels=32 there, 64 here"),
    # devices
    ("device-bogus", GEN + ["--device", "bogus", "--out", "{new}/a.png"], "--device 'bogus' is not a device"),
    ("device-missing-gpu", GEN + ["--device", "cuda:99", "--out", "{new}/a.png"], "--device cuda:99"),
    ("device-cuda-without-one", GEN + ["--device", "cuda", "--out", "{new}/a.png"], "--device cuda: "),
    # config files and training data
    ("config-is-a-folder", ["train", "--config", "{cfg_dir}", "--out", "{new}/run"], "is a folder: give a YAML file"),
    ("config-malformed", ["train", "--config", "{bad_yaml}", "--out", "{new}/run"],
     "bad.yaml is not valid YAML: expected ',' or ']', but got ':' at line 3"),
    ("override-malformed", ["train", "--config", "{cfg}", "optim.lr=[1", "--out", "{new}/run"],
     "override 'optim.lr=[1': the value is not valid YAML"),
    ("corrupt-image-with-buckets", ["train", "--config", "{cfg}", "TINY_NEW", *IMG_DATA, "data.aspect_ratios=[1:1, 2:1]"],
     "cannot read {imgs}/broken.png"),
    ("caption-not-utf8", ["train", "--config", "{cfg}", "TINY_NEW", *IMG_DATA, "data.path={caps}",
                          "data.condition=text"], "x.txt is not UTF-8 text"),
    # output paths: before any sampling or training
    ("generate-out-is-a-folder", GEN + ["--out", "{tmp}/folder.png"], "folder.png is a folder: give a file name"),
    ("generate-out-exists", GEN + ["--out", "{tmp}/exists.png"], "exists.png exists: pass --overwrite"),
    ("generate-out-read-only", GEN + ["--out", "{ro}/a.png"], "cannot write to {ro}"),
    ("video-out-is-a-folder", VID + ["--out", "{tmp}/folder.gif"], "folder.gif is a folder"),
    ("video-out-exists", VID + ["--out", "{tmp}/exists.gif"], "exists.gif exists: pass --overwrite"),
    ("video-out-read-only", VID + ["--out", "{ro}/a.gif"], "cannot write to {ro}"),
    ("convert-out-exists", ["convert", "--trained", "{img}", "--out", "{pipe_copy}"], "pipe_copy exists: pass --overwrite"),
    ("convert-out-of-other-files", ["convert", "--trained", "{img}", "--out", "{tmp}/others", "--overwrite"],
     "is a folder of other files (no pipeline.json)"),
    ("convert-out-is-a-file", ["convert", "--trained", "{img}", "--out", "{tmp}/exists.png"], "is a file, not a folder"),
    ("convert-out-read-only", ["convert", "--trained", "{img}", "--out", "{ro}/p"], "cannot write to {ro}"),
    ("train-out-holds-a-run", ["train", "--config", "{cfg}", "TINY_RUN", "--out", "{run}"],
     "holds an earlier run (checkpoints or final/): --resume continues it, --overwrite starts it again"),
    ("train-out-is-a-file", ["train", "--config", "{cfg}", "TINY_RUN", "--out", "{tmp}/exists.png"],
     "exists.png is a file, not a folder"),
    ("train-out-read-only", ["train", "--config", "{cfg}", "TINY_RUN", "--out", "{ro}/run"], "cannot write to {ro}"),
    ("train-resume-and-overwrite", ["train", "--config", "{cfg}", "TINY_NEW", "--resume", "--overwrite"],
     "resume and overwrite exclude each other"),
    # model and training values
    ("channels-not-a-number", ["train", "--config", "{cfg}", "TINY_NEW", "model.channels=abc"],
     "model.channels: expected an integer, got 'abc'"),
    ("channels-negative", ["train", "--config", "{cfg}", "TINY_NEW", "model.channels=-4"], "channels must be >= 1"),
    ("img-size-zero", ["train", "--config", "{cfg}", "TINY_NEW", "model.img_size=0"], "img_size must be >= 1"),
    ("txt-size-negative", ["train", "--config", "{cfg}", "TINY_NEW", "model.txt_size=-1"], "txt_size must be >= 0"),
    ("soft-clip-negative", ["train", "--config", "{cfg}", "TINY_NEW", "model.soft_clip=-1"], "soft_clip must be a finite"),
    ("warmup-negative", ["train", "--config", "{cfg}", "TINY_NEW", "optim.warmup_steps=-1"],
     "optim.warmup_steps must be a finite number >= 0"),
    ("grad-clip-negative", ["train", "--config", "{cfg}", "TINY_NEW", "optim.grad_clip=-1"],
     "optim.grad_clip must be a finite number >= 0"),
    ("max-steps-zero", ["train", "--config", "{cfg}", "TINY_NEW", "optim.max_steps=0"], "optim.max_steps must be >= 1"),
    ("threads-negative", ["train", "--config", "{cfg}", "TINY_NEW", "optim.num_threads=-1"],
     "optim.num_threads must be >= 1"),
    ("backend-unknown", ["train", "--config", "{cfg}", "TINY_NEW", "dist.backend=mpi"], "dist.backend must be auto, gloo"),
    ("timeout-zero", ["train", "--config", "{cfg}", "TINY_NEW", "dist.timeout_s=0"], "dist.timeout_s must be a finite"),
    ("lr-infinite", ["train", "--config", "{cfg}", "TINY_NEW", "optim.lr=.inf"], "need a finite optim.lr > 0"),
    # sampler values on the command line: 0 and negatives are errors, never the default
    ("guidance-nan", GEN + ["--guidance", "nan", "--out", "{new}/a.png"], "guidance must be a number in [0, 100]"),
    ("guidance-absurd", GEN + ["--guidance", "1e9", "--out", "{new}/a.png"], "guidance must be a number in [0, 100]"),
    ("block-size-zero", GEN + ["--jacobi-block-size", "0", "--out", "{new}/a.png"], "--jacobi-block-size: must be >= 1"),
    ("block-size-negative", GEN + ["--jacobi-block-size", "-3", "--out", "{new}/a.png"],
     "--jacobi-block-size: must be >= 1"),
    ("max-iter-zero", GEN + ["--jacobi-max-iter", "0", "--out", "{new}/a.png"], "--jacobi-max-iter: must be >= 1"),
    ("batch-size-zero", GEN + ["--batch-size", "0", "--out", "{new}/a.png"], "--batch-size: must be >= 1"),
    ("images-zero", GEN + ["-n", "0", "--out", "{new}/a.png"], "--num-images: must be >= 1"),
    ("height-zero", GEN + ["--height", "0", "--out", "{new}/a.png"], "--height: must be >= 1"),
    ("scale-zero", GEN + ["--scale", "0", "--out", "{new}/a.png"], "--scale: must be >= 1"),
    ("fps-zero", VID + ["--fps", "0", "--out", "{new}/a.gif"], "--fps: must be >= 1"),
    ("frames-zero", VID + ["--frames", "0", "--out", "{new}/a.gif"], "--frames: must be >= 1"),
]


def _argv(args: list[str], w: dict[str, Path], new: Path) -> list[str]:
    out = []
    for a in args:
        if a in ("TINY_RUN", "TINY_NEW"):   # the reference run's settings (into a copy of it, or a new folder)
            target = w["changed"] if a == "TINY_RUN" and "--resume" in args else (w["run"] if a == "TINY_RUN" else new)
            out += train_argv(w["cfg"], target, *_run_settings())[3:]
            continue
        out.append(a.format(new=new, **{k: str(v) for k, v in w.items()}))
    return out


def _run_settings():
    from .conftest import RUN
    return RUN


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_code_2(world, tmp_path, capsys, case):
    name, args, message = case
    if name == "device-missing-gpu" and torch.cuda.device_count() > 99:
        pytest.skip("this machine has a cuda:99")
    if name == "device-cuda-without-one" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    new = tmp_path / "new"
    before = {p: p.stat().st_mtime_ns for p in world["tmp"].rglob("*") if p.is_file()}
    argv = _argv(args, world, new)
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message.format(**{k: str(v) for k, v in world.items()}) in err
    lines = [ln for ln in err.splitlines() if ln.startswith("starflow")]
    assert len(lines) == 1 and ": error: " in lines[0]                  # one line (argparse prints its usage first)
    assert not new.exists()                                              # nothing written where the output goes
    after = {p: p.stat().st_mtime_ns for p in world["tmp"].rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before    # nothing replaced
    assert not (world["tmp"] / "pwned").exists()                         # no pickle ran code


def test_debug_shows_the_traceback(world, tmp_path, capsys):
    with pytest.raises(ValueError, match="is not a device"):
        main(GEN[:4] + ["--model", str(world["img"]), "--device", "bogus", "--out", str(tmp_path / "a.png"), "--debug"])
    with pytest.raises(ValueError, match="is not a device"):
        main(["--debug"] + GEN[:4] + ["--model", str(world["img"]), "--device", "bogus", "--out", str(tmp_path / "a.png")])


def test_overwrite_replaces_an_existing_output(world, tmp_path, capsys):
    out = tmp_path / "a.png"
    out.write_bytes(b"old")
    assert main(_argv(GEN, world, tmp_path / "new") + ["--out", str(out), "--overwrite"]) == 0
    assert Image.open(out).size == (4, 4)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bugs_keep_their_traceback(monkeypatch, world, tmp_path):
    from starflow.cli import generate

    def broken(*a, **k):
        raise TypeError("a bug")
    monkeypatch.setattr(generate, "load_any_pipeline", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(_argv(GEN, world, tmp_path / "new") + ["--out", str(tmp_path / "a.png")])


def test_a_broken_or_malicious_conformance_file_fails_alone(conformance_dir, world, tmp_path, capsys):
    folder = tmp_path / "vectors"
    shutil.copytree(conformance_dir, folder)
    n_cases = sum(len(torch.load(f, weights_only=True)["cases"]) for f in folder.glob("*.pt"))
    shutil.copy(world["evil_pth"], folder / "aaa_evil.pt")          # sorted first: it must not stop the others
    shutil.copy(world["trunc_pth"], folder / "aab_truncated.pt")
    (folder / "aac_empty.pt").write_bytes(b"")
    torch.save({"config": {}, "state_dict": {}, "cases": "not a list", "format": "starflow-conformance/1"},
               folder / "aad_odd.pt")
    assert main(["conformance", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"{n_cases} passed, 4 failed" in out and "Traceback" not in out
    assert "aaa_evil.pt" in out and "holds Python objects other than tensors" in out
    assert "aab_truncated.pt" in out and "truncated or corrupt" in out
    assert "aac_empty.pt" in out and "the file is empty" in out
    assert not (world["tmp"] / "pwned").exists()


# ---- the same rules through the Python API --------------------------------------------------------------
@pytest.mark.parametrize("key,value,message", [("head_dim", 0, "head_dim must be >= 1"),
                                               ("patch_size", 0, "patch_size must be >= 1"),
                                               ("channels", "abc", "expected an integer"),
                                               ("soft_clip", float("nan"), "soft_clip must be a finite")])
def test_model_values_through_the_api(key, value, message):
    from starflow.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**TINY, key: value})


def test_sampling_and_denoising_values_through_the_api():
    from starflow.sampling.denoise import learned_denoise, score_denoise
    from starflow.sampling.sample import sample

    model = _flow()
    z, y = torch.randn(2, 1, 4, 4), torch.randn(3, 1, 11)
    with pytest.raises(ValueError, match="y has 3 rows for 2 items of z"):
        sample(model, z, y)
    with pytest.raises(ValueError, match="y has 3 rows for 2 items of x"):
        model(z, y)
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
            score_denoise(model, z, y[:2], bad)
        with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
            learned_denoise(model, z, y[:2], noise_std=bad)
    with pytest.raises(ValueError, match="guidance must be a number in"):
        sample(model, z, y[:2], guidance=float("nan"))


def test_zero_is_not_a_default_in_the_pipelines(world):
    pipe = StarFlowPipeline.from_pretrained(world["img"])
    for kw, message in [(dict(batch_size=0), "batch_size must be >= 1"), (dict(height=0), "height 0 must be"),
                        (dict(num_images_per_prompt=0), "must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            pipe("1", progress=False, **kw)
    vid = StarFlowVideoPipeline.from_pretrained(world["vid"])
    with pytest.raises(ValueError, match="fps must be >= 1"):
        vid("1", fps=0, progress=False)
