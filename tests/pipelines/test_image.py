import json

import numpy as np
import pytest
import torch
from PIL import Image

from starflow.flow.io import CheckpointError
from starflow.pipelines import StarFlowPipeline, StarFlowVideoPipeline, load_pipeline
from starflow.sampling.sample import SamplerOptions, sample


PROMPTS = ["3", "7"]


def test_seed_reproduces_and_batching_does_not_matter(image_pipe):
    a = image_pipe(PROMPTS, num_images_per_prompt=3, seed=5, output_type="pt", progress=False)
    c = image_pipe(PROMPTS, num_images_per_prompt=3, seed=6, output_type="pt", progress=False)
    # noise is drawn for all images up front: batches see the same noise (Jacobi's early stop is per batch,
    # so compare exactly with the sequential sampler)
    kw = dict(num_images_per_prompt=3, seed=5, output_type="pt", progress=False, method="sequential")
    torch.testing.assert_close(image_pipe(PROMPTS, **kw).images, image_pipe(PROMPTS, batch_size=2, **kw).images,
                               atol=1e-6, rtol=0)
    assert (a.images - c.images).abs().max() > 1e-3
    assert a.prompts == ["3", "3", "3", "7", "7", "7"]
    g = torch.Generator().manual_seed(5)
    d = image_pipe(PROMPTS, num_images_per_prompt=3, generator=g, output_type="pt", progress=False)
    torch.testing.assert_close(a.images, d.images, atol=0, rtol=0)


def test_save_load_round_trip_from_specs(image_pipe, tmp_path):
    before = image_pipe(PROMPTS, num_images_per_prompt=2, seed=1, output_type="pt", progress=False).images
    image_pipe.save_pretrained(tmp_path / "p")
    spec = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert spec["text_encoder"] == "labels:10" and spec["autoencoder"] == "identity" and spec["kind"] == "image"
    loaded = StarFlowPipeline.from_pretrained(tmp_path / "p")
    after = loaded(PROMPTS, num_images_per_prompt=2, seed=1, output_type="pt", progress=False).images
    assert torch.equal(before, after)
    assert isinstance(load_pipeline(tmp_path / "p"), StarFlowPipeline)
    with pytest.raises(ValueError, match="image model"):
        StarFlowVideoPipeline.from_pretrained(tmp_path / "p")


def test_round_trip_with_given_autoencoder_and_strict_weights(latent_image_pipe, pool_ae, tmp_path):
    before = latent_image_pipe(PROMPTS, seed=2, output_type="pt", progress=False).images
    latent_image_pipe.save_pretrained(tmp_path / "p")
    loaded = StarFlowPipeline.from_pretrained(tmp_path / "p", autoencoder=pool_ae())
    assert torch.equal(before, loaded(PROMPTS, seed=2, output_type="pt", progress=False).images)
    # a flow file that does not fit the config is refused, naming keys
    from safetensors.torch import load_file, save_file
    sd = load_file(str(tmp_path / "p" / "flow" / "model.safetensors"))
    sd.pop(next(iter(sd)))
    save_file(sd, str(tmp_path / "p" / "flow" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys"):
        StarFlowPipeline.from_pretrained(tmp_path / "p", autoencoder=pool_ae())


def test_matches_the_sampler_directly(image_pipe, labels):
    """The pipeline adds nothing to the samples beyond noise, prompt encoding, guidance and denoising."""
    out = image_pipe(["4"], seed=0, guidance=2.0, denoise="none", output_type="latent", progress=False).images
    z = torch.randn((1, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    x = sample(image_pipe.flow, z, labels.encode(["4"]), labels.null(1),
               SamplerOptions(guidance=2.0, jacobi_block_size=4))
    torch.testing.assert_close(out, x)


def test_every_output_type(latent_image_pipe):
    pipe = latent_image_pipe
    pil = pipe(PROMPTS, num_images_per_prompt=2, seed=0, progress=False).images
    assert len(pil) == 4 and all(isinstance(i, Image.Image) and i.size == (8, 8) and i.mode == "L" for i in pil)
    arr = pipe(PROMPTS, num_images_per_prompt=2, seed=0, output_type="np", progress=False).images
    assert isinstance(arr, np.ndarray) and arr.shape == (4, 8, 8, 1) and arr.min() >= 0 and arr.max() <= 1
    pt = pipe(PROMPTS, num_images_per_prompt=2, seed=0, output_type="pt", progress=False).images
    assert pt.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(pt.movedim(1, -1).numpy(), arr, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[1]), (arr[1, ..., 0] * 255).round().astype(np.uint8))
    lat = pipe(PROMPTS, num_images_per_prompt=2, seed=0, output_type="latent", progress=False).images
    assert lat.shape == (4, 2, 4, 4)
    with pytest.raises(ValueError, match="output_type"):
        pipe(PROMPTS, output_type="jpeg")


def test_guidance_negative_prompt_denoise_and_samplers(image_pipe):
    kw = dict(seed=0, output_type="latent", progress=False)
    base = image_pipe(["1"], guidance=2.0, denoise="none", **kw).images
    neg = image_pipe(["1"], negative_prompt="2", guidance=2.0, denoise="none", **kw).images
    unguided = image_pipe(["1"], guidance=0.0, denoise="none", **kw).images
    assert (base - neg).abs().max() > 1e-4 and (base - unguided).abs().max() > 1e-4
    score = image_pipe(["1"], guidance=2.0, denoise="score", **kw).images
    assert (score - base).abs().max() > 1e-5
    seq = image_pipe(["1"], guidance=2.0, denoise="none", method="sequential", **kw).images
    exact = image_pipe(["1"], guidance=2.0, denoise="none", jacobi_th=0.0, jacobi_max_iter=16, **kw).images
    torch.testing.assert_close(seq, exact, atol=1e-4, rtol=1e-4)
    # a bf16 draft changes where Jacobi starts, not what it accepts: still the exact sample
    drafted = image_pipe(["1"], guidance=2.0, denoise="none", jacobi_th=0.0, jacobi_max_iter=16,
                         jacobi_draft="bf16", **kw).images
    torch.testing.assert_close(seq, drafted, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="jacobi_draft"):
        image_pipe(["1"], jacobi_draft="fp8", **kw)
    with pytest.raises(ValueError, match="learnable self-denoiser"):
        image_pipe(["1"], denoise="learned", **kw)
    with pytest.raises(ValueError, match="sampler"):
        image_pipe(["1"], method="euler", **kw)


def test_sizes_and_aspect_ratios(latent_image_pipe):
    pipe = latent_image_pipe
    out = pipe(["1"], aspect_ratio="2:3", seed=0, output_type="pt", progress=False).images
    # 8x8 pixels (area 64), multiple 2: h = round(sqrt(64 * 3/2) / 2) * 2 = 10, w = round(sqrt(64 * 2/3) / 2) * 2 = 6
    assert out.shape == (1, 1, 10, 6)
    assert pipe(["1"], height=12, width=4, seed=0, output_type="pt", progress=False).images.shape == (1, 1, 12, 4)
    with pytest.raises(ValueError, match="unknown aspect ratio '7:5'"):
        pipe(["1"], aspect_ratio="7:5")
    with pytest.raises(ValueError, match="multiple of 2"):
        pipe(["1"], height=9)


def test_bad_prompts(image_pipe):
    with pytest.raises(ValueError, match="prompt list is empty"):
        image_pipe([])
    with pytest.raises(ValueError, match="give a prompt"):
        image_pipe()
    with pytest.raises(ValueError, match="negative prompts"):
        image_pipe(["1", "2"], negative_prompt=["3"], guidance=1.0)


def test_components_must_fit_the_flow(labels, flow_factory, pool_ae):
    with pytest.raises(ValueError, match="txt_dim"):
        StarFlowPipeline(flow_factory(txt_dim=7), labels, None)
    with pytest.raises(ValueError, match="channel_size"):
        StarFlowPipeline(flow_factory(channel_size=3), labels, pool_ae())


def test_unconditional_model(flow_factory):
    flow = flow_factory(txt_size=0, txt_dim=0, cond_top_only=False)
    pipe = StarFlowPipeline(flow, None, None)
    out = pipe(num_images=3, seed=0, output_type="pt", progress=False)
    assert out.images.shape == (3, 2, 4, 4) and out.prompts is None


def test_from_config_yaml(tmp_path):
    import yaml
    from starflow.pipelines.spec import PipelineSpec
    cfg = tmp_path / "tiny.yaml"
    model = dict(channel_size=1, img_size=4, channels=48, blocks=2, layers_per_block=[1, 1], head_dim=24,
                 txt_size=1, txt_dim=11, cond_top_only=True, seq_order="L2R")
    cfg.write_text(yaml.safe_dump({"kind": "image", "model": model, "text_encoder": "labels:10",
                                   "autoencoder": "identity", "defaults": {"sampling": {"guidance": 2.0}}}))
    pipe = StarFlowPipeline.from_config(cfg, seed=0)
    assert pipe.defaults.sampling.guidance == 2.0 and pipe.config.txt_dim == 11
    assert isinstance(pipe.spec, PipelineSpec) and pipe.spec.text_encoder == "labels:10"
    assert len(pipe(["1", "2"], seed=0, progress=False).images) == 2
    with pytest.raises(ValueError, match="image model"):
        StarFlowVideoPipeline.from_config(cfg)


def test_from_a_0_1_trained_folder(flow_factory, tmp_path, write_legacy_export):
    """A starflow 0.1 `starflow train` export (config.json + model.safetensors) becomes a pipeline with its
    training set-up (newer runs export a pipeline folder directly: tests/training)."""
    from starflow.training import load_train_config
    flow = flow_factory(seed=4, channel_size=1)
    tcfg = load_train_config(None, ["data.condition=labels", "data.noise_std=0.2", "optim.max_steps=1",
                                    "log.sample_guidance=1.5"])
    write_legacy_export(tmp_path / "final", flow, tcfg.to_dict())
    pipe = StarFlowPipeline.from_trained(tmp_path / "final")
    assert (pipe.text_encoder_spec, pipe.autoencoder_spec) == ("labels:10", "identity")
    d = pipe.defaults
    assert (d.noise_std, d.sampling.guidance, d.denoise) == (0.2, 1.5, "score")
    out = pipe(["5"], seed=0, output_type="latent", denoise="none", guidance=0.0, progress=False).images
    z = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, sample(flow, z, pipe.text_encoder.encode(["5"]), None,
                                           SamplerOptions(jacobi_block_size=32)))
    with pytest.raises(ValueError, match="image model"):
        StarFlowVideoPipeline.from_trained(tmp_path / "final")
    with pytest.raises(FileNotFoundError, match="training run folder"):
        StarFlowPipeline.from_pretrained(tmp_path)


def test_the_learned_denoiser_precision_reaches_the_image_denoising(labels):
    """An image model with a learnable denoiser: denoiser_precision="bf16" denoises the same sample with the kept bf16
    copy (close to, not equal to, the float32 step); an unknown precision is refused."""
    from .conftest import make_flow

    pipe = StarFlowPipeline(make_flow(learnable_self_denoiser=True, conditional_denoiser=True), labels, None,
                            defaults=dict(noise_std=0.1, denoise="learned", sampling=dict(guidance=1.0)),
                            autoencoder_spec="identity")
    kw = dict(seed=0, progress=False, output_type="latent")
    raw = pipe(["1"], denoise="none", **kw).images
    full = pipe(["1"], **kw).images
    half = pipe(["1"], denoiser_precision="bf16", **kw).images
    step = (full - raw).abs().max().item()
    assert step > 0 and not torch.equal(half, full) and (half - full).abs().max().item() < 0.1 * step
    with pytest.raises(ValueError, match="denoiser_precision"):
        pipe(["1"], denoiser_precision="fp8", **kw)
