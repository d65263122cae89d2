import json

import numpy as np
import pytest
import torch

from starflow import ModelConfig, StarFlow
from starflow.cli.main import main
from starflow.conditioning import load_text_encoder
from starflow.data import DigitsDataset, digit_caption
from starflow.evaluation.clip_score import clip_score, load_clip
from starflow.evaluation.fid import dataset_source
from starflow.pipelines import StarFlowPipeline

from .tiny_nets import write_tiny_clip, write_tiny_inception


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_score_is_the_mean_cosine_of_the_local_clip(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    ds = DigitsDataset("test")
    src = dataset_source(ds, "digits", limit=20)
    prompts = [digit_caption(int(v)) for v in ds.labels[:20]]
    score = clip_score(load_clip(clip_dir), src, prompts, batch_size=7, progress=False)
    # independently: the raw transformers model, all 20 at once
    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=proc(images=list(src.read(0, 20)),
                                                         return_tensors="pt")["pixel_values"])
        txt = proc(text=prompts, return_tensors="pt", padding=True)
        tx = model.get_text_features(input_ids=txt["input_ids"], attention_mask=txt["attention_mask"])
    img, tx = (t if isinstance(t, torch.Tensor) else t.pooler_output for t in (img, tx))
    expected = (100 * torch.nn.functional.cosine_similarity(img, tx)).mean().item()
    assert expected > 1                                       # the seed of the tiny CLIP makes it positive
    assert score == pytest.approx(expected, rel=1e-4)
    shuffled = clip_score(load_clip(clip_dir), src, prompts[::-1], progress=False)
    assert shuffled != pytest.approx(score, rel=1e-3)          # the score depends on which prompt goes with which


def test_missing_clip_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="--clip FOLDER"):
        load_clip(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found locally"):
        load_clip(tmp_path / "no-such-clip")


def test_clip_score_and_fid_commands_on_a_text_to_image_pipeline(clip_dir, tmp_path, capsys):
    te = load_text_encoder("minilm", 8)
    cfg = ModelConfig.from_dict(dict(channel_size=1, img_size=8, patch_size=2, channels=32, blocks=2,
                                     layers_per_block=[1, 1], head_dim=16, rope=False, sos=True, txt_size=8, txt_dim=te.dim,
                                     cond_top_only=True, use_softplus=True, use_final_norm=True, soft_clip=2.0))
    torch.manual_seed(0)
    StarFlowPipeline(StarFlow(cfg), te, None, autoencoder_spec="identity",
                     defaults=dict(sampling=dict(guidance=1.0))).save_pretrained(tmp_path / "t2i")
    from PIL import Image
    ref = tmp_path / "ref"
    ref.mkdir()
    g = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(g.integers(0, 256, (16, 16), dtype=np.uint8)).save(ref / f"{i}.png")   # resized to 8x8
    rc = main(["evaluate", "clip-score", "fid", "--model", str(tmp_path / "t2i"), "--data", "digits", "--clip",
               str(clip_dir), "--ref", str(ref), "--inception", str(write_tiny_inception(tmp_path / "inc")),
               "--num-samples", "6", "--batch-size", "3", "--out", str(tmp_path / "r.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert res["clip-score"]["num_samples"] == 6 and res["clip-score"]["clip"] == str(clip_dir)
    assert res["clip-score"]["clip_score"] >= 0 and "CLIP score" in out
    assert res["fid"]["reference"]["size"] == [8, 8] and res["fid"]["num_reference"] == 6
    manifest = json.loads((tmp_path / "r.work" / "samples" / "manifest.json").read_text())
    assert manifest["prompts"] == list(DigitsDataset("test").captions[:6])   # the data's own captions
