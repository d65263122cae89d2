"""`starflow inpaint` and `starflow edit` write the files they should; bad input is one clear line."""
import numpy as np
import pytest
from PIL import Image

from starflow.cli.main import main


def run(*argv):
    return main([str(a) for a in argv] + ["--no-progress"])


def test_inpaint_and_edit_images(image_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray((np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)).save(src)
    out = tmp_path / "out.png"
    assert run("inpaint", "3", "--model", image_dir, "--image", src, "--box", "0,2,4,4", "--iterations", 2,
               "--out", out) == 0
    a, b = np.asarray(Image.open(src)), np.asarray(Image.open(out))
    assert b.shape == (4, 4) and np.array_equal(a[:2], b[:2])            # the known upper half, byte for byte
    mask = tmp_path / "m.png"
    Image.fromarray(np.array([[0] * 4] * 2 + [[255] * 4] * 2, dtype=np.uint8)).save(mask)
    assert run("inpaint", "3", "--model", image_dir, "--image", src, "--mask", mask, "--iterations", 1,
               "--sampler", "sequential", "--inpaint-method", "resample", "--out", tmp_path / "out2.png") == 0
    assert run("edit", "7", "--model", image_dir, "--image", src, "--source-prompt", "3", "--strength", 0.7,
               "--out", tmp_path / "edit.png", "--scale", 4) == 0
    assert Image.open(tmp_path / "edit.png").size == (16, 16)


def test_inpaint_a_video_region_in_every_frame(video_dir, tmp_path):
    from starflow.data.media import save_video

    src = tmp_path / "in.gif"
    frames = (np.random.default_rng(0).random((3, 4, 4, 1)) * 255).astype(np.uint8)
    save_video(frames, src, fps=5)
    out = tmp_path / "out.gif"
    assert run("inpaint", "4", "--model", video_dir, "--image", src, "--box", "0,0,4,2", "--iterations", 1,
               "--out", out) == 0
    from starflow.data.media import load_video
    got = load_video(out)
    assert got.shape[0] == 3 and np.array_equal(got[:, 2:, :, 0], frames[:, 2:, :, 0])


@pytest.mark.parametrize("argv, message", [
    (["inpaint", "3", "--image", "{src}", "--out", "{tmp}/o.png"], "needs a mask"),
    (["inpaint", "3", "--image", "{src}", "--box", "0,0,9,9", "--out", "{tmp}/o.png"], "not inside"),
    (["inpaint", "3", "--image", "{src}", "--box", "1,2", "--out", "{tmp}/o.png"], "four integers"),
    (["inpaint", "3", "--image", "{tmp}/nope.png", "--box", "0,0,2,2", "--out", "{tmp}/o.png"], "no such file"),
    (["inpaint", "3", "--image", "{src}", "--box", "0,0,2,2", "--out", "{tmp}/o.gif"], "images are written as"),
    (["edit", "3", "--image", "{src}", "--strength", "1.5", "--out", "{tmp}/o.png"], "strength"),
    (["edit", "3", "--image", "{big}", "--out", "{tmp}/o.png"], "does not fit the model"),
])
def test_bad_input_is_one_clear_line(image_dir, tmp_path, capsys, argv, message):
    src, big = tmp_path / "in.png", tmp_path / "big.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(src)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(big)
    argv = [a.format(src=src, big=big, tmp=tmp_path) for a in argv] + ["--model", str(image_dir)]
    assert run(*argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
