"""Two CPU processes (gloo) against one: DDP and FSDP2 follow the single-process run, and checkpoints move
freely between FSDP and a single process."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from starflow.training import train

WORKER = Path(__file__).with_name("dist_worker.py")
# EMA, the learnable denoiser (a second forward pass, its own optimiser) and noise augmentation included
EXTRA = ("optim.max_steps=4", "log.ckpt_every=2", "log.keep_last=5", "optim.ema=0.9", "model.learnable_self_denoiser=True",
         "model.conditional_denoiser=True", "data.dequantize=false", "data.noise_std=0.3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(jobs: list[dict], folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), str(spec)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {j["name"]: json.loads((folder / f"{j['name']}.json").read_text()) for j in jobs}


def _copy_ckpt(src_run: Path, step: int, dst_run: Path) -> None:
    name = f"ckpt-{step:08d}"
    (dst_run / "checkpoints").mkdir(parents=True)
    shutil.copytree(src_run / "checkpoints" / name, dst_run / "checkpoints" / name)


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoints_cross(tmp_path, tiny_cfg, tiny_args, losses):
    single = train(tiny_cfg(*EXTRA, out="single"))
    ref = losses(single)
    _copy_ckpt(tmp_path / "single", 2, tmp_path / "fsdp_from_single")
    jobs = [
        {"name": "ddp", "overrides": tiny_args("ddp", *EXTRA, "dist.strategy=ddp")},
        {"name": "fsdp", "overrides": tiny_args("fsdp", *EXTRA, "dist.strategy=fsdp")},
        {"name": "fsdp_from_single", "overrides": tiny_args("fsdp_from_single", *EXTRA, "dist.strategy=fsdp",
                                                            "resume=true")},
    ]
    got = _torchrun(jobs, tmp_path / "dist")
    tol = dict(rel=1e-5, abs=1e-6)
    assert got["ddp"]["losses"] == pytest.approx(ref, **tol)
    assert got["fsdp"]["losses"] == pytest.approx(ref, **tol)
    assert got["fsdp"]["test_bpd"] == pytest.approx(single.test_bpd, abs=1e-4)
    # a single-process checkpoint resumed under FSDP
    assert got["fsdp_from_single"]["steps"] == [3, 4]
    assert got["fsdp_from_single"]["losses"] == pytest.approx(ref[2:], **tol)
    # an FSDP checkpoint: same file format as a single-process one, and it resumes in one process
    fsdp_ck = tmp_path / "fsdp" / "checkpoints" / "ckpt-00000002"
    single_ck = tmp_path / "single" / "checkpoints" / "ckpt-00000002"
    for stem in ("model", "ema"):
        a, b = load_file(fsdp_ck / f"{stem}.safetensors"), load_file(single_ck / f"{stem}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    _copy_ckpt(tmp_path / "fsdp", 2, tmp_path / "single_from_fsdp")
    resumed = train(tiny_cfg(*EXTRA, "resume=true", out="single_from_fsdp"))
    assert losses(resumed) == pytest.approx(ref[2:], **tol)
