"""`starflow conformance` over the vendored official vectors (or $STARFLOW_CONFORMANCE_DIR)."""
import copy

import torch

from starflow.cli.main import main


def test_conformance_passes_every_case(conformance_dir, capsys):
    assert main(["conformance", str(conformance_dir)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and "FAIL" not in out
    n = sum(len(torch.load(f, weights_only=True)["cases"]) for f in conformance_dir.glob("*.pt"))
    assert f"{n} passed, 0 failed" in out


def test_conformance_fails_on_wrong_numbers_unknown_op_and_key(conformance_dir, tmp_path, capsys):
    data = torch.load(conformance_dir / "t2i_deep_shallow.pt", weights_only=True)
    bad = copy.deepcopy(data)
    bad["cases"][0]["outputs"]["z"] = bad["cases"][0]["outputs"]["z"] + 1e-3
    torch.save(bad, tmp_path / "wrong.pt")
    assert main(["conformance", str(tmp_path / "wrong.pt")]) == 1
    assert "FAIL" in capsys.readouterr().out
    op = copy.deepcopy(data)
    op["cases"] = [{**op["cases"][0], "op": "teleport"}]
    torch.save(op, tmp_path / "op.pt")
    assert main(["conformance", str(tmp_path / "op.pt")]) == 1
    assert "unknown op 'teleport'" in capsys.readouterr().out
    key = copy.deepcopy(data)
    key["config"]["mystery_knob"] = 1
    torch.save(key, tmp_path / "key.pt")
    assert main(["conformance", str(tmp_path / "key.pt")]) == 1
    assert "unknown key(s) mystery_knob" in capsys.readouterr().out


def test_conformance_on_other_config_values(tmp_path, capsys):
    """Vectors made by our own model for other key values: the runner must implement keys, not files."""
    from starflow import ModelConfig, StarFlow
    from starflow.evaluation.conformance import run_case

    cfg = dict(channel_size=3, img_size=4, patch_size=2, channels=32, blocks=2, layers_per_block=[2], head_dim=8,
               rope=True, sos=False, txt_size=0, txt_dim=0, use_swiglu=True, norm_type="rms_norm", num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    model = StarFlow(ModelConfig.from_dict(cfg)).eval()
    x = torch.randn(2, 3, 4, 4)
    case = {"op": "forward", "params": {}, "inputs": {"x": x}, "atol": 1e-5, "rtol": 0.0}
    case["outputs"] = {k: v for k, v in run_case(model, case).items()}
    torch.save({"format": "starflow-conformance/1", "name": "ours", "config": cfg,
                "state_dict": model.state_dict(), "cases": [case]}, tmp_path / "ours.pt")
    assert main(["conformance", str(tmp_path)]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
