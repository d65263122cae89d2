"""benchmarks/pack_bench_models.py (bench models carried to the GPU machine in bf16) and benchmarks/mfu.py's options."""
import importlib.util
from pathlib import Path

import pytest
import torch

from starflow.evaluation.bench import load_bench_model

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets" / "conformance"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pack_and_unpack_give_float32_conformance_files_rounded_to_bf16(tmp_path):
    pk = _load("pack_bench_models")
    files = {"bench_t2i_small": ASSETS / "t2i_deep_shallow.pt", "bench_t2v_small": ASSETS / "t2v_long_window.pt"}
    st, js = pk.pack(tmp_path, tmp_path / "packed", files)
    assert st.suffix == ".safetensors" and js.suffix == ".json"
    assert st.stat().st_size < 0.6 * sum(p.stat().st_size for p in files.values())     # half of float32, roughly
    written = pk.unpack(tmp_path / "packed", tmp_path / "out")
    assert sorted(p.name for p in written) == ["bench_t2i_small.pt", "bench_t2v_small.pt"]
    for name, src in files.items():
        a = torch.load(src, weights_only=True)
        b = torch.load(tmp_path / "out" / f"{name}.pt", weights_only=True)
        assert b["config"] == a["config"] and b["state_dict"].keys() == a["state_dict"].keys()
        assert "cases" not in b and "bf16" in b["description"]
        for k, v in a["state_dict"].items():
            w = b["state_dict"][k]
            assert w.dtype == torch.float32 and torch.equal(w, v.to(torch.bfloat16).float())
        assert load_bench_model(tmp_path / "out" / f"{name}.pt").config.is_video_model == (name == "bench_t2v_small")
    with pytest.raises(SystemExit, match="not found"):
        pk.unpack(tmp_path / "missing", tmp_path / "out")


def test_mfu_options_change_the_computation_not_the_count():
    mfu = _load("mfu")
    tiny = dict(mfu.DEEP_3B, channels=64, layers_per_block=[1], img_size=4, txt_size=4, txt_dim=16)
    base = mfu.measure(2, 1, 0, 989.0, False, tiny, "cpu")
    other = mfu.measure(2, 1, 0, 989.0, False, tiny, "cpu", sdpa="math", tf32=True)
    assert (other["sdpa"], other["tf32"], base["sdpa"]) == ("math", True, "default")
    assert other["params_b"] == base["params_b"] and other["tokens_per_step"] == base["tokens_per_step"] == 2 * 20
    torch.set_float32_matmul_precision("highest")        # measure() set "high" for tf32: the default again
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):                  # the kernel choice is applied: cuDNN has no CPU kernel
            mfu.measure(2, 1, 0, 989.0, False, tiny, "cpu", sdpa="cudnn")
    assert set(mfu.VARIANTS) >= {"base", "b16", "b16_compile", "b16_cudnn"}
