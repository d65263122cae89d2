"""Bad input gets a clear error naming the problem."""
import pytest
import torch

from starflow import CheckpointError, ConfigError, ModelConfig, StarFlow
from starflow.flow.io import load_state_dict_strict, read_state_dict
from starflow.sampling.sample import sample


@pytest.fixture
def model(make_model):
    return make_model(dtype=torch.float32)


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(2, 4, 4), torch.randn(2, 3, 5))


def test_wrong_channels(model):
    with pytest.raises(ValueError, match="3 channels; the model takes 2"):
        model(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5))


def test_nan_input(model):
    x = torch.randn(2, 2, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="NaN"):
        sample(model, x, torch.randn(2, 3, 5))


def test_prompt_embedding_of_wrong_width(model):
    with pytest.raises(ValueError, match=r"y must be \(B, L, 5\)"):
        model(torch.randn(2, 2, 4, 4), torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="conditioned"):
        model(torch.randn(2, 2, 4, 4))


def test_guidance_needs_null_embedding(model):
    with pytest.raises(ValueError, match="y_null"):
        sample(model, torch.randn(1, 2, 4, 4), torch.randn(1, 3, 5), guidance=2.0)


def test_unknown_sampler(model):
    with pytest.raises(ValueError, match="sampler"):
        sample(model, torch.randn(1, 2, 4, 4), torch.randn(1, 3, 5), method="euler")


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="unknown key.s. chanels"):
        ModelConfig.from_dict({"chanels": 64})


@pytest.mark.parametrize("bad,msg", [
    (dict(seq_order="up"), "seq_order"),
    (dict(norm_type="batch_norm"), "norm_type"),
    (dict(local_attn_window=2), "shallow_block_local"),
    (dict(layers_per_block=[1, 2]), "layers_per_block"),
    (dict(img_size=5, patch_size=2), "patch_size"),
])
def test_invalid_config_values(bad, msg):
    base = dict(channel_size=2, img_size=4, channels=48, blocks=3, layers_per_block=[1], head_dim=24, txt_size=3,
                txt_dim=5)
    with pytest.raises(ConfigError, match=msg):
        ModelConfig.from_dict({**base, **bad})


def test_state_dict_errors_name_the_key(model):
    sd = model.state_dict()
    missing = dict(sd)
    missing.pop("blocks.2.proj_txt.weight")
    with pytest.raises(CheckpointError, match="missing keys: blocks.2.proj_txt.weight"):
        load_state_dict_strict(StarFlow(model.config), missing)
    with pytest.raises(CheckpointError, match="unexpected keys: blocks.0.extra"):
        load_state_dict_strict(StarFlow(model.config), {**sd, "blocks.0.extra": torch.zeros(1)})
    wrong = {**sd, "blocks.0.proj_in.weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=r"blocks.0.proj_in.weight: checkpoint \(3, 3\)"):
        load_state_dict_strict(StarFlow(model.config), wrong)
    nan = {**sd, "blocks.0.proj_in.bias": torch.full_like(sd["blocks.0.proj_in.bias"], float("nan"))}
    with pytest.raises(CheckpointError, match="NaN"):
        load_state_dict_strict(StarFlow(model.config), nan)


def test_corrupt_checkpoint_file(tmp_path, model):
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")
