import pytest

from starflow.config import ConfigError
from starflow.training import TrainConfig, load_train_config
from starflow.training.inputs import Conditioner, resolve_model_config


def test_yaml_sections_overrides_and_coercion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  channels: 64\ndata:\n  condition: labels\noptim:\n  lr: 1e-3\n  max_steps: 10\n")
    cfg = load_train_config(p, ["optim.lr=2e-4", "optim.betas=[0.9, 0.99]", "log.keep_last=5", "model.blocks=3"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.9, 0.99] and cfg.log.keep_last == 5
    assert cfg.model == {"channels": 64, "blocks": 3} and cfg.data.condition == "labels"
    # YAML 1.1 reads "1e-3" as a string: it must still become a float
    assert load_train_config(p).optim.lr == 1e-3
    # YAML 1.1 would read 16:9 as the base-60 integer 969
    assert load_train_config(p, ["data.aspect_ratios=[1:1, 16:9]"]).data.aspect_ratios == ["1:1", "16:9"]


@pytest.mark.parametrize("override, match", [
    ("optim.lr_max=1", "unknown key.*optim.lr_max"),
    ("datta.dataset=digits", "unknown key.*datta"),
    ("optim.batch_size=abc", "optim.batch_size.*int"),
    ("data.dataset=cifar", "data.dataset must be one of"),
    ("optim.max_steps=null", "max_steps or optim.max_seconds"),
    ("optim.batch_size=10", "multiple of grad_accum"),
])
def test_bad_config_is_a_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config(None, ["optim.max_steps=5", "optim.grad_accum=4", "optim.batch_size=16", override])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_train_config(None, ["optim.lr"])


@pytest.mark.filterwarnings("ignore:.*official settings that are not part of the model")
def test_official_yaml_gives_the_model_part(tmp_path):
    off = tmp_path / "official.yaml"
    off.write_text("arguments:\n- img_size: 16\n- channel_size: 1\n- patch_size: 2\n- channels: 64\n"
                   "- blocks: 3\n- layers_per_block: 1 1 2\n- head_dim: 32\n- noise_std: 0.3\n- lr: 1e-4\n"
                   "- vae: null\n- cfg: 2.5\n- use_softplus: 1\n")
    p = tmp_path / "train.yaml"
    p.write_text("model:\n  official_yaml: official.yaml\n  channels: 32\noptim:\n  max_steps: 1\n"
                 "data:\n  image_size: 16\n")
    cfg = load_train_config(p)

    class NoCond:
        mode, dim, txt_size = "none", 0, 0
    m = resolve_model_config(cfg, (1, 16, 16), NoCond(), None)
    assert (m.channels, m.blocks, m.layers_per_block, m.use_softplus, m.img_size) == (32, 3, [1, 1, 2], 1, 16)
    assert m.txt_dim == 0 and m.extra["noise_std"] == 0.3 and m.extra["lr"] == 1e-4   # 1e-4: a number

    class FakeAE:
        spatial_factor, latent_channels = 4, 1
    m = resolve_model_config(cfg, (1, 16, 16), NoCond(), FakeAE())
    assert m.img_size == 4  # official img_size is in pixels: divided by the autoencoder factor


def test_model_keys_that_contradict_the_data_are_errors():
    cfg = load_train_config(None, ["optim.max_steps=1", "model.channel_size=3"])

    class NoCond:
        mode, dim, txt_size = "none", 0, 0
    with pytest.raises(ConfigError, match="channel_size=3 contradicts the data"):
        resolve_model_config(cfg, (1, 8, 8), NoCond(), None)


def test_conditioning_none_has_no_width(tmp_path):
    from starflow.data import DigitsDataset
    import torch

    c = Conditioner("none", "minilm", 4, DigitsDataset("test"), torch.device("cpu"))
    assert c.dim == 0 and c.embed(["a"], torch.tensor([1]), torch.tensor([False])) is None


@pytest.mark.parametrize("name, mode, dim, shape", [
    ("digits_class_cond.yaml", "labels", 11, (1, 8, 8)),
    ("digits_t2i.yaml", "text", 384, (1, 8, 8)),
    ("moving_digits_t2v.yaml", "text", 384, (8, 1, 16, 16)),
])
def test_shipped_configs_load(name, mode, dim, shape):
    from pathlib import Path

    from starflow import StarFlow

    path = Path(__file__).resolve().parents[2] / "configs" / name
    cfg = load_train_config(path)
    assert cfg.data.condition == mode

    class Cond:
        pass
    c = Cond()
    c.mode, c.dim, c.txt_size = mode, dim, (1 if mode == "labels" else cfg.data.txt_size)
    m = resolve_model_config(cfg, shape, c, None)
    assert m.txt_dim == dim and m.channel_size == 1
    StarFlow(m)  # builds


@pytest.mark.parametrize("override, bad", [("model.chanels=64", "model.chanels"), ("model.lr=1", "model.lr"),
                                           ("model.noise_std=0.3", "model.noise_std")])
def test_unknown_model_keys_are_errors_at_load_time(tmp_path, override, bad):
    # official non-model keys (lr, noise_std) are no model keys: only an official file may bring them
    with pytest.raises(ConfigError, match=f"unknown key.*{bad}"):
        load_train_config(None, ["optim.max_steps=1", override])
    p = tmp_path / "train.yaml"
    p.write_text(f"model:\n  {bad.split('.')[1]}: 1\noptim:\n  max_steps: 1\n")
    with pytest.raises(ConfigError, match=f"unknown key.*{bad}"):
        load_train_config(p)


def test_unknown_model_keys_are_errors_when_the_model_is_built():
    # a TrainConfig made in code is checked on construction: it cannot smuggle a non-model key into the model
    class NoCond:
        mode, dim, txt_size = "none", 0, 0
    for key in ("chanels", "lr"):
        with pytest.raises(ConfigError, match=f"model.{key}"):
            TrainConfig(model={"channels": 32, key: 1})
    m = resolve_model_config(TrainConfig(model={"channels": 32, "head_dim": 16}), (1, 8, 8), NoCond(), None)
    assert m.channels == 32 and m.extra == {}


def test_official_extras_come_only_from_the_official_file(tmp_path):
    off = tmp_path / "official.yaml"
    off.write_text("arguments:\n- channels: 64\n- head_dim: 32\n- lr: 0.0001\n- noise_std: 0.3\n")
    ok = load_train_config(None, ["optim.max_steps=1", f"model.official_yaml={off}", "model.blocks=3"])

    class NoCond:
        mode, dim, txt_size = "none", 0, 0
    with pytest.warns(UserWarning, match=r"not used: lr=0.0001, noise_std=0.3.*optim.lr"):  # said, not dropped silently
        m = resolve_model_config(ok, (1, 8, 8), NoCond(), None)
    assert m.blocks == 3 and m.extra == {"lr": 0.0001, "noise_std": 0.3}
    with pytest.raises(ConfigError, match="unknown key.*model.lr"):  # the same key beside official_yaml
        load_train_config(None, ["optim.max_steps=1", f"model.official_yaml={off}", "model.lr=1"])
    # a resolved model dict with its extras (what load_trained hands back) still loads
    cfg = TrainConfig.from_dict({"model": m.to_dict(), "optim": {"max_steps": 1}})
    assert cfg.model["extra"] == {"lr": 0.0001, "noise_std": 0.3}
