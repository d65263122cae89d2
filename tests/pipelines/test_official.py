"""from_official on tiny official-format configs and state dicts; our configs/ against the official values."""
from pathlib import Path

import pytest
import torch
import yaml

from starflow.config import MODEL_SIZES, ConfigError, ModelConfig
from starflow.flow.io import CheckpointError
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline, read_spec
from starflow.pipelines.base import BasePipeline
from starflow.pipelines.spec import spec_from_official

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Official `arguments:` format; img_size in pixels (the autoencoder stand-in halves it to the flow's 4).
TINY_OFFICIAL = [
    {"img_size": 8}, {"txt_size": 1}, {"channel_size": 2}, {"patch_size": 1}, {"channels": 48}, {"blocks": 2},
    {"layers_per_block": "1 1"}, {"head_dim": 24}, {"noise_std": 0.1}, {"rope": True}, {"sos": True},
    {"seq_order": "L2R"}, {"use_softplus": True}, {"cond_top_only": True}, {"use_final_norm": True}, {"soft_clip": 2},
    {"cfg": 1.5}, {"drop_label": 0.1}, {"batch_size": 16},
]


def write_official(tmp_path: Path, extra=()) -> Path:
    path = tmp_path / "official.yaml"
    path.write_text(yaml.safe_dump({"arguments": TINY_OFFICIAL + list(extra)}))
    return path


def official_checkpoint(flow, tmp_path: Path) -> Path:
    """An official-style .pth: parameters plus the unused buffers official checkpoints carry."""
    sd = dict(flow.state_dict())
    sd["var"] = torch.ones(1)
    sd["blocks.0.attn_mask"] = torch.ones(4, 4)
    path = tmp_path / "model.pth"
    torch.save(sd, path)
    return path


def test_from_official_image(flow_factory, pool_ae, labels, tmp_path):
    flow = flow_factory(seed=3)
    cfg, ckpt = write_official(tmp_path), official_checkpoint(flow, tmp_path)
    pipe = StarFlowPipeline.from_official(cfg, ckpt, text_encoder_spec="labels:10", autoencoder=pool_ae())
    assert pipe.config.img_size == 4 and pipe.config.txt_dim == 11
    d = pipe.defaults
    assert (d.noise_std, d.sampling.guidance, d.denoise, d.fps_cond) == (0.1, 1.5, "score", False)
    ref = StarFlowPipeline(flow, labels, pool_ae(), defaults=d)
    kw = dict(seed=0, output_type="pt", progress=False)
    assert torch.equal(pipe(["1", "9"], **kw).images, ref(["1", "9"], **kw).images)
    # saved in our format, it loads back without the official files
    pipe.save_pretrained(tmp_path / "ours")
    back = StarFlowPipeline.from_pretrained(tmp_path / "ours", autoencoder=pool_ae())
    assert torch.equal(back(["1", "9"], **kw).images, ref(["1", "9"], **kw).images)


def test_from_official_video_reads_vid_size_and_flags(flow_factory, pool_ae, tmp_path):
    cfg = write_official(tmp_path, [{"vid_size": "5:4"}, {"temporal_causal": 1}, {"shallow_block_local": True},
                                    {"fps_cond": 0}, {"mix_aspect": 1}])
    flow = flow_factory(temporal_causal=1, shallow_block_local=True)
    pipe = BasePipeline.from_official(cfg, official_checkpoint(flow, tmp_path), text_encoder_spec="labels:10",
                                      autoencoder=pool_ae())
    assert isinstance(pipe, StarFlowVideoPipeline)
    assert (pipe.defaults.num_frames, pipe.defaults.fps, pipe.defaults.mix_aspect) == (5, 4, True)
    assert pipe(["2"], output_type="latent", seed=0, progress=False).frames.shape == (1, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="video model"):
        StarFlowPipeline.from_official(cfg, None, text_encoder_spec="labels:10", autoencoder=pool_ae())


def test_from_official_rejects_bad_files(flow_factory, pool_ae, tmp_path):
    cfg = write_official(tmp_path)
    wrong = flow_factory(channels=72)                       # another width than the config says
    with pytest.raises(CheckpointError, match="shape mismatch"):
        StarFlowPipeline.from_official(cfg, official_checkpoint(wrong, tmp_path), text_encoder_spec="labels:10",
                                       autoencoder=pool_ae())
    with pytest.raises(ConfigError, match="unknown key.s. colour"):
        StarFlowPipeline.from_official(write_official(tmp_path, [{"colour": 1}]), None,
                                       text_encoder_spec="labels:10", autoencoder=pool_ae())
    with pytest.raises(ConfigError, match="not a multiple of the autoencoder factor 2"):
        spec_from_official({"img_size": 7, "channel_size": 2}, spatial_factor=2, txt_dim=0)


@pytest.mark.parametrize("name,size,factor", [("starflow_3b_t2i_256.yaml", "starflow-3b-t2i-256", 8),
                                              ("starflow_v_7b_t2v_480p.yaml", "starflow-v-7b-t2v-480p", 16)])
def test_our_configs_carry_the_official_architecture(name, size, factor):
    spec = read_spec(CONFIGS / name)
    assert spec.model_config().to_dict() == ModelConfig.from_dict(MODEL_SIZES[size]).to_dict()
    assert spec.text_encoder == "t5:google/flan-t5-xl"
    # the official file's arguments (pixels, no txt_dim) map to the same architecture
    official = dict(MODEL_SIZES[size], img_size=MODEL_SIZES[size]["img_size"] * factor, noise_std=spec.defaults.noise_std)
    official.pop("txt_dim")
    video = "v_7b" in name
    if video:
        official["vid_size"] = "81:16"
    mapped = spec_from_official(official, spatial_factor=factor, txt_dim=2048)
    arch = mapped.model_config().to_dict()
    extra = arch.pop("extra")                                               # non-architecture keys kept aside
    assert extra.pop("noise_std") == spec.defaults.noise_std and extra == ({"vid_size": "81:16"} if video else {})
    assert arch == spec.model_config().to_dict()
    assert mapped.kind == spec.kind == ("video" if video else "image")
    assert (mapped.defaults.num_frames, mapped.defaults.fps) == ((81, 16) if video else (None, None))


def test_video_config_defaults_match_the_official_480p_setting():
    d = read_spec(CONFIGS / "starflow_v_7b_t2v_480p.yaml").defaults
    assert (d.num_frames, d.fps, d.noise_std, d.denoise) == (81, 16, 0.5, "learned")
    assert d.fps_cond and d.cond_noise_level and d.mix_aspect
    from starflow.pipelines import aspect_ratio_to_size
    assert aspect_ratio_to_size(640, d.aspect_ratio, 16) == (480, 848)


def test_read_spec_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"kind": "image", "model": {"channel_size": 1}, "defaults": {"guidence": 2}}))
    with pytest.raises(ConfigError, match="unknown key.*guidence"):
        read_spec(p)
    p.write_text(yaml.safe_dump({"arguments": [{"img_size": 8}]}))
    with pytest.raises(ConfigError, match="official config"):
        read_spec(p)


def test_official_checkpoint_with_our_config(flow_factory, labels, tmp_path):
    """Our YAML format works in place of the official one (configs/ carry the official values)."""
    flow = flow_factory(seed=5)
    ours = tmp_path / "ours.yaml"
    ours.write_text(yaml.safe_dump({"kind": "image", "model": flow.config.to_dict(), "text_encoder": "labels:10",
                                    "autoencoder": "identity", "defaults": {"sampling": {"guidance": 1.0}}}))
    pipe = StarFlowPipeline.from_official(ours, official_checkpoint(flow, tmp_path))
    ref = StarFlowPipeline(flow, labels, None, defaults=dict(sampling=dict(guidance=1.0)))
    kw = dict(seed=0, output_type="latent", progress=False)
    assert torch.equal(pipe(["4"], **kw).images, ref(["4"], **kw).images)
