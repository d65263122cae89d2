"""An official YAML's train.py settings in `starflow train`: mapped onto our config, or named as ignored, once."""
import warnings

import pytest
import yaml

from starflow.config import OFFICIAL_NON_MODEL_KEYS, OFFICIAL_TRAIN_KEYS, ConfigError, ModelConfig
from starflow.training import load_train_config
from starflow.training.official import IGNORED, MAPPED

from ..official_tiny import ASSETS

# official train.py arguments that no official config file carries (and that were errors before)
NEVER_IN_A_FILE = {"warmup_steps": 500, "epoch_length": 1000, "noise_type": "gaussian", "acc": 2, "train_seed": 7,
                   "caption_column": "text", "secondary_dataset": None, "secondary_vid_size": None,
                   "vae_decoder_factor": 1.0, "noise_embed_denoiser": 0, "fp8": 0, "use_8bit_adam": 0,
                   "last_frame_cond": 0, "video_to_video": 0, "resume_path": None, "resume_epoch": 0, "dry_run": 0,
                   "wandb_name": None, "save_every": 20, "num_samples": 4096, "model_config_path": None}


def _official(tmp_path, extra=None):
    args = yaml.safe_load((ASSETS / "starflow_3B_t2i_256x256.yaml").read_text())["arguments"]
    args += [{k: v} for k, v in (extra or {}).items()]
    path = tmp_path / "official.yaml"
    path.write_text(yaml.safe_dump({"arguments": args}))
    return path


def test_every_official_setting_is_mapped_or_named():
    assert not set(MAPPED) & set(IGNORED)
    assert set(OFFICIAL_NON_MODEL_KEYS) <= set(MAPPED) | set(IGNORED)
    assert set(NEVER_IN_A_FILE) <= OFFICIAL_TRAIN_KEYS
    model_fields = set(ModelConfig.__dataclass_fields__)
    assert set(MAPPED) | set(IGNORED) <= OFFICIAL_NON_MODEL_KEYS | model_fields


def test_official_train_settings_reach_our_config(tmp_path):
    off = _official(tmp_path, NEVER_IN_A_FILE)
    with pytest.warns(UserWarning) as caught:
        cfg = load_train_config(None, ["optim.max_steps=1", f"model.official_yaml={off}", "optim.min_lr=0"])
    assert len(caught) == 1                                      # one warning, naming every ignored setting
    text = str(caught[0].message)
    for key in ("epoch_length", "no_flip", "wds", "fp8", "save_every", "dry_run", "resume_epoch", "nvp"):
        assert key in text, key
    assert "optim.max_steps" in text and "lr -> optim.lr" in text     # why, and what was used
    o, d = cfg.optim, cfg.data
    assert (o.lr, o.warmup_steps, o.batch_size, o.grad_accum, o.latent_norm_reg) == (6.4e-05, 500, 32, 2, 1e-4)
    assert o.min_lr == 0                                         # the user's own value wins
    assert (d.noise_std, d.caption_dropout, d.condition, d.text_encoder, d.autoencoder, d.txt_size, d.image_size) == \
        (0.3, 0.1, "text", "t5:google/flan-t5-xl", "sd-vae:stabilityai/sd-vae-ft-ema", 4, 32)
    assert (cfg.seed, cfg.log.sample_guidance, cfg.dist.strategy) == (7, 2.5, "fsdp")


def test_video_settings_and_uniform_noise(tmp_path):
    off = ASSETS / "starflow-v_7B_t2v_caus_480p.yaml"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cfg = load_train_config(None, ["optim.max_steps=1", f"model.official_yaml={off}"])
    assert (cfg.data.num_frames, cfg.data.autoencoder, cfg.optim.grad_clip, cfg.optim.grad_skip_threshold) == \
        (5, "wan:Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6", 1.0, 1.0)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cfg = load_train_config(None, ["optim.max_steps=1", f"model.official_yaml={_official(tmp_path, {'noise_type': 'uniform'})}",
                                       "data.autoencoder=identity"])
    assert cfg.data.dequantize and cfg.data.noise_std == 0


def test_unknown_or_unsupported_official_settings_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown official setting.*colour"):
        load_train_config(None, ["optim.max_steps=1", f"model.official_yaml={_official(tmp_path, {'colour': 1})}"])
    with pytest.raises(ConfigError, match="adaln=1 is an architecture starflow does not implement"):
        ModelConfig.from_dict({"channels": 64, "adaln": 1}, official=True)
