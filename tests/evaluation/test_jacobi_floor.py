"""benchmarks/jacobi_floor.py: Jacobi started from each block's exact solution, the float32 work any guess leaves."""
import json

import pytest
import torch

from starflow.config import ModelConfig

from .fake_official import load_script


def test_the_floor_checks_every_token_once(video_model_file, capsys):
    path = video_model_file
    c = ModelConfig.from_dict(torch.load(path)["config"])
    T = 4
    assert load_script("jacobi_floor").main(["--model", str(path), "--rounds", "1", "--frames", str(T),
                                             "--eager-sequential"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("video_sequential_s", "video_jacobi_s", "video_jacobi_floor_s"):
        assert res[key] > 0, key
    assert set(res["floor_parts_s"]) == {"deep", "shallow", "denoiser"}
    assert res["video_frames"] == T and not res["sequential_compiled"]
    # from the exact solution the float32 check accepts every token in its first window: the deep block's first
    # window (2 frames), one window per later frame (each after a re-encoded slide), one pass per shallow block
    frame_tokens = (c.img_size // c.patch_size) ** 2
    shallow = sum(1 for n in c.layers_per_block_full[:-1] if n > 0)
    assert res["floor_float32_calls"] == 1 + (T - 2) + shallow
    assert res["floor_float32_tokens"] == T * frame_tokens + shallow * frame_tokens
    # a sample from the usual first guesses needs at least as many float32 evaluations
    assert res["jacobi_float32_tokens"] >= res["floor_float32_tokens"]


def test_refuses_an_image_model_and_bad_rounds(make_model, tmp_path):
    model = make_model(dtype=torch.float32)
    path = tmp_path / "image.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    script = load_script("jacobi_floor")
    with pytest.raises(SystemExit, match="image model"):
        script.main(["--model", str(path), "--rounds", "1"])
    with pytest.raises(SystemExit, match="rounds"):
        script.main(["--model", str(path), "--rounds", "0"])
