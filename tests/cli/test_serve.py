"""`starflow serve`: loads a model folder of either kind, serves on loopback, says what is wrong in one line."""
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from starflow import ModelConfig, StarFlow
from starflow.cli import serve as serve_cli
from starflow.cli.main import main
from starflow.conditioning import load_text_encoder
from starflow.pipelines import StarFlowPipeline

TINY = dict(channel_size=1, img_size=8, patch_size=2, channels=32, blocks=2, layers_per_block=[1, 1], head_dim=16,
            rope=True, sos=True, txt_size=1, txt_dim=11, cond_top_only=True, use_softplus=True, use_final_norm=True,
            soft_clip=2.0, seq_order="L2R")


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    pipe = StarFlowPipeline(StarFlow(ModelConfig.from_dict(TINY)).eval(), load_text_encoder("labels:10", 1), None,
                            defaults=dict(sampling=dict(jacobi_block_size=4)), autoencoder_spec="identity")
    return pipe.save_pretrained(tmp_path / "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, message", [
    (["--model", "MISSING"], "no such directory"),
    ([], "give either --model DIR or --official-config"),
    (["--model", "MODEL", "--port", "70000"], "a port is 1 to 65535"),
    (["--model", "MODEL", "--max-samples", "0"], "--max-samples must be >= 1"),
])
def test_bad_arguments_are_one_line(argv, message, model_dir, tmp_path, capsys):
    argv = [str(tmp_path / "missing") if a == "MISSING" else str(model_dir) if a == "MODEL" else a for a in argv]
    assert main(["serve", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("starflow serve: error:")


def test_a_port_in_use_says_so(model_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 1
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serves_the_model_on_loopback_until_closed(model_dir, tmp_path, monkeypatch, capsys):
    from gradio_client import Client

    import starflow.serve.app as app_module

    started = []
    real_launch = app_module.launch

    def launch(app, host, port, **kw):                 # the app the command starts, to close it from here
        started.append((app, host))
        return real_launch(app, host, port, **kw)
    monkeypatch.setattr(app_module, "launch", launch)
    port = _free_port()
    codes = []
    t = threading.Thread(target=lambda: codes.append(main(["serve", "--model", str(model_dir), "--port", str(port),
                                                           "--outputs", str(tmp_path / "out")])), daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.2)
    app, host = started[0]
    assert host == "127.0.0.1"
    gallery, settings, _ = Client(url, verbose=False).predict("2", "", 1.0, "jacobi", 4, 1e-3, 0, 1, "1:1",
                                                              api_name="/text_to_image")
    assert len(gallery) == 1 and "| model | tiny |" in settings
    assert list((tmp_path / "out").glob("*/sample_00.png"))          # --outputs is where the files go
    app.close()
    t.join(30)
    assert codes == [0]
    out = capsys.readouterr().out
    assert f"open http://127.0.0.1:{port} in a browser" in out and "image model" in out


def test_run_folder_names_the_run():
    assert serve_cli._name(Path("/cache/digits_t2i-abc/run/final")) == "digits_t2i-abc/run/final"
    assert serve_cli._name(Path("/models/my-pipeline")) == "my-pipeline"
