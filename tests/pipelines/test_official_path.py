"""The official user's path on scaled-down copies of the official files: their YAML and checkpoint, the official
sampling scripts' defaults, the prompt templates the models were trained with, images from the video model,
bf16 weights, and errors that name the component at fault."""
from pathlib import Path

import pytest
import torch

from starflow import load_official
from starflow.config import MODEL_SIZES, ConfigError, ModelConfig
from starflow.flow.io import model_config_for
from starflow.pipelines import BasePipeline, StarFlowPipeline, StarFlowVideoPipeline
from starflow.sampling.sample import sample

from ..official_tiny import RecordingEncoder, tiny_sd_vae, tiny_t5, tiny_wan, write_official

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    files = {kind: write_official(kind, root) for kind in ("image", "video")}
    return dict(files=files, t5=tiny_t5(root / "t5"), sd=tiny_sd_vae(root / "sd"), wan=tiny_wan(root / "wan"),
                root=root)


def _image(parts, **kw):
    cfg, ckpt, _ = parts["files"]["image"]
    kw.setdefault("text_encoder_spec", f"t5:{parts['t5']}")
    return StarFlowPipeline.from_official(cfg, ckpt, autoencoder_spec=f"sd-vae:{parts['sd']}", **kw)


def _video(parts, **kw):
    cfg, ckpt, _ = parts["files"]["video"]
    kw.setdefault("text_encoder_spec", f"t5:{parts['t5']}")
    return StarFlowVideoPipeline.from_official(cfg, ckpt, autoencoder_spec=f"wan:{parts['wan']}", **kw)


# ---- 1. one route for a YAML + checkpoint, whichever file it is -----------------------------------------------
def test_official_yaml_and_ours_read_the_same_architecture(parts, tmp_path):
    for kind in ("image", "video"):
        cfg, ckpt, ref = parts["files"][kind]
        model = load_official(cfg, ckpt)                  # pixels -> latents by the vae's factor; txt_dim: checkpoint
        for k, v in ref.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        pipe = (_image if kind == "image" else _video)(parts)
        assert pipe.flow.config == model.config
        assert all(torch.equal(pipe.flow.state_dict()[k], v) for k, v in ref.state_dict().items())
    # our configs/*.yaml through the same route (it used to stop at "unknown config key 'kind'")
    assert model_config_for(CONFIGS / "starflow_3b_t2i_256.yaml") == ModelConfig.from_dict(
        MODEL_SIZES["starflow-3b-t2i-256"])
    assert model_config_for(CONFIGS / "starflow_v_7b_t2v_480p.yaml") == ModelConfig.from_dict(
        MODEL_SIZES["starflow-v-7b-t2v-480p"])
    # the official YAML without a checkpoint: the text width must be given
    with pytest.raises(ConfigError, match="no txt_dim.*txt_dim="):
        load_official(parts["files"]["image"][0])
    assert load_official(parts["files"]["image"][0], txt_dim=32).config.img_size == 4


def test_our_config_format_loads_an_official_checkpoint(parts, tmp_path):
    import yaml

    ref = parts["files"]["image"][2]
    ours = tmp_path / "ours.yaml"
    ours.write_text(yaml.safe_dump({"kind": "image", "model": ref.config.to_dict(), "text_encoder": "labels:10",
                                    "autoencoder": "identity"}))
    model = load_official(ours, parts["files"]["image"][1], torch_dtype=torch.bfloat16)
    assert all(torch.equal(model.state_dict()[k], v.bfloat16()) for k, v in ref.state_dict().items())


# ---- 2. the official sampling scripts' defaults --------------------------------------------------------------
def test_official_checkpoints_default_to_the_official_scripts(parts):
    d = _image(parts).defaults
    assert (d.sampling.method, d.sampling.guidance, d.sampling.jacobi_block_size, d.sampling.jacobi_th,
            d.sampling.jacobi_max_iter) == ("jacobi", 3.6, 16, 1e-3, 32)          # test_sample_image.sh
    assert (d.denoise, d.noise_std, d.mix_aspect, d.aspect_ratios) == ("score", 0.3, False, ["1:1"])
    v = _video(parts).defaults
    assert (v.sampling.guidance, v.sampling.jacobi_block_size, v.sampling.context_length) == (3.5, 32, 16)
    assert (v.aspect_ratio, v.num_frames, v.fps, v.denoise, v.noise_std) == ("16:9", 5, 16, "learned", 0.5)
    assert v.fps_cond and v.cond_noise_level and v.mix_aspect and len(v.aspect_ratios) == 9


# ---- 3. templates and sizes follow the model's training settings ---------------------------------------------
def test_mixed_aspect_video_model_always_names_the_aspect_ratio(parts):
    enc = RecordingEncoder()
    pipe = _video(parts, text_encoder=enc)
    kw = dict(seed=0, output_type="latent", progress=False, guidance=0.0)
    out = pipe(["a cat"], **kw).frames
    assert enc.texts[-1] == "Noise Level 500:\nA video with 16 fps:\na cat\n\n in a 16:9 aspect ratio.\n"
    assert out.shape[-2:] == (3, 5)                      # 16:9 of a 64 px square: 48 x 80 px behind the 16x VAE
    pipe(["a cat"], aspect_ratio="1:1", **kw)
    assert enc.texts[-1].endswith(" in a 1:1 aspect ratio.\n")
    out = pipe(["a cat"], height=96, width=48, **kw).frames   # the 9:21 size: named as such in the prompt
    assert enc.texts[-1].endswith(" in a 9:21 aspect ratio.\n") and out.shape[-2:] == (6, 3)
    with pytest.raises(ValueError, match="80x48 is the size of the aspect ratios 2:3, 9:16.*give the aspect ratio"):
        pipe(["a cat"], height=80, width=48, **kw)
    with pytest.raises(ValueError, match="64x32 is not a size this model was trained on.*16:9 \\(48x80\\)"):
        pipe(["a cat"], height=64, width=32, **kw)
    with pytest.raises(ValueError, match="unknown aspect ratio '7:5'"):
        pipe(["a cat"], aspect_ratio="7:5", **kw)


def test_square_image_model_makes_its_square_only(parts):
    enc = RecordingEncoder()
    pipe = _image(parts, text_encoder=enc)
    kw = dict(seed=0, output_type="pt", progress=False)
    assert pipe(["a cat"], **kw).images.shape == (1, 3, 32, 32)
    assert enc.texts[-2:] == ["a cat", ""]                # no aspect phrase: the model was trained without one
    assert pipe(["a cat"], aspect_ratio="1:1", **kw).images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="aspect ratio 16:9: this model was trained on 32x32 .* pictures only"):
        pipe(["a cat"], aspect_ratio="16:9", **kw)
    with pytest.raises(ValueError, match="64x32 is not a size this model was trained on; it makes 32x32"):
        pipe(["a cat"], height=64, **kw)


# ---- 4. --frames 1: an image under "An image:" ---------------------------------------------------------------
def test_one_frame_is_an_image_of_the_video_model(parts):
    enc = RecordingEncoder()
    pipe = _video(parts, text_encoder=enc)
    out = pipe(["a cat"], num_frames=1, seed=0, output_type="latent", progress=False, denoise="none").frames
    assert enc.texts[0] == "Noise Level 500:\nAn image:\na cat\n\n in a 16:9 aspect ratio.\n"
    assert out.shape == (1, 1, 4, 3, 5)
    # sampled as the official --target_length 1 does: image noise through the model's image mode
    g = torch.Generator().manual_seed(0)
    z = torch.randn((1, 4, 3, 5), generator=g)
    y, y_null = enc.encode(enc.texts[:1]), enc.encode(enc.texts[1:2])
    ref = sample(pipe.flow, z, y, y_null, pipe.defaults.sampling)
    torch.testing.assert_close(out[:, 0], ref)
    pics = pipe(["a cat"], num_frames=1, seed=0, output_type="pt", progress=False).frames
    assert pics.shape == (1, 1, 3, 48, 80)
    with pytest.raises(ValueError, match="image-to-video needs at least 2 latent frames"):
        pipe(["a cat"], num_frames=1, image=torch.zeros(3, 48, 80), progress=False)


# ---- 5. bf16 weights -----------------------------------------------------------------------------------------
def test_torch_dtype_loads_every_component_in_bf16(parts, tmp_path):
    pipe = _image(parts, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.flow.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.autoencoder.parameters()} == {torch.bfloat16}
    img = pipe(["a cat"], seed=0, output_type="pt", progress=False).images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    ref = _image(parts)(["a cat"], seed=0, output_type="pt", progress=False).images
    assert (img - ref).abs().mean() < 0.1                 # the same picture, to bf16's precision
    pipe.save_pretrained(tmp_path / "p")
    back = BasePipeline.from_pretrained(tmp_path / "p", torch_dtype=torch.float32)
    assert {p.dtype for p in back.flow.parameters()} == {torch.float32}


# ---- 7. errors that name what is wrong -----------------------------------------------------------------------
def test_wrong_components_are_named(parts, tmp_path):
    narrow = tiny_t5(tmp_path / "t5-16", width=16)
    with pytest.raises(ConfigError, match=f"text encoder t5:{narrow} gives 16-dim embeddings, but the checkpoint "
                                          f"expects 32-dim ones .*google/flan-t5-xl"):
        _image(parts, text_encoder_spec=f"t5:{narrow}")
    coarse = tiny_sd_vae(tmp_path / "sd2", levels=2)        # 4 channels like the SD-VAE, but a 2x grid
    cfg, ckpt, _ = parts["files"]["image"]
    with pytest.raises(ConfigError, match=r"autoencoder sd-vae:.*sd2 has spatial factor 2, but .* was trained behind "
                                          r"stabilityai/sd-vae-ft-ema \(factor 8\)"):
        StarFlowPipeline.from_official(cfg, ckpt, text_encoder_spec=f"t5:{parts['t5']}",
                                       autoencoder_spec=f"sd-vae:{coarse}")
    # a pipeline folder remembers its autoencoder's factor
    _image(parts).save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="spatial factor 2, but the model was trained behind one of factor 8"):
        StarFlowPipeline.from_pretrained(tmp_path / "p", autoencoder_spec=f"sd-vae:{coarse}")
    from starflow.pipelines.base import PipelineKindError
    with pytest.raises(PipelineKindError, match="holds a video model"):
        StarFlowPipeline.from_official(*parts["files"]["video"][:2])
