"""Text encoders loaded the way users load them: a tiny random T5 saved to disk, and the bundled MiniLM."""
import socket

import pytest
import torch

from starflow.conditioning import HFTextEncoder, MissingWeightsError, load_text_encoder, text_spec_from_official


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    d = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(cfg).save_pretrained(d)
    ByT5Tokenizer().save_pretrained(d)  # byte-level: needs no vocabulary file
    return d


@pytest.fixture(scope="module")
def t5(t5_dir):
    return load_text_encoder(f"t5:{t5_dir}", 12)


def _reference(t5_dir, text, length):
    """The official recipe written out: tokenise to max_length, last_hidden_state * attention_mask."""
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = T5EncoderModel.from_pretrained(t5_dir).eval()
    t = tok(text, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    with torch.no_grad():
        return model(**t).last_hidden_state * t["attention_mask"].unsqueeze(-1), t["attention_mask"]


def test_t5_shapes_and_official_recipe(t5, t5_dir):
    assert isinstance(t5, HFTextEncoder) and (t5.dim, t5.length) == (16, 12)
    y = t5.encode(["hi", "a prompt longer than twelve bytes"])
    assert y.shape == (2, 12, 16) and y.dtype == torch.float32
    ref, mask = _reference(t5_dir, ["hi", "a prompt longer than twelve bytes"], 12)
    torch.testing.assert_close(y, ref)
    # "hi" is 2 bytes + </s>: the rest is padding and must be exactly zero; the long prompt is truncated
    assert mask[0].sum() == 3
    assert torch.all(y[0, 3:] == 0) and torch.all(y[0, :3].abs().sum(-1) > 0)
    assert torch.all(y[1].abs().sum(-1) > 0)


def test_t5_templates_are_applied_before_tokenising(t5, t5_dir):
    y = t5.encode(["x"], fps=8, noise_std=0.3)
    ref, _ = _reference(t5_dir, ["Noise Level 300:\nA video with 8 fps:\nx\n"], 12)
    torch.testing.assert_close(y, ref)


def test_null_is_the_templated_empty_prompt(t5):
    n = t5.null(3, fps=16)
    assert n.shape == (3, 12, 16)
    torch.testing.assert_close(n, t5.encode([""] * 3, fps=16))
    assert not torch.allclose(n, t5.null(3))  # the template changes the unconditional embedding


def test_encoder_is_frozen(t5):
    assert all(not p.requires_grad for p in t5.parameters())
    t5.train()
    assert not t5.training and not t5.model.training
    assert not t5.encode(["a"]).requires_grad
    assert t5.to("cpu") is t5


def test_minilm_bundled_default():
    enc = load_text_encoder("minilm", 16)
    assert (enc.dim, enc.length, enc.spec) == (384, 16, "minilm")
    y = enc.encode(["a photo of a cat", "a much longer description of a small brown dog running on the green grass in the park today"])
    assert y.shape == (2, 16, 384) and y.dtype == torch.float32
    # [CLS] a photo of a cat [SEP] = 7 tokens, then padding zeroed
    assert torch.all(y[0, 7:] == 0) and torch.all(y[0, :7].abs().sum(-1) > 0)
    assert torch.all(y[1].abs().sum(-1) > 0)
    torch.testing.assert_close(enc.encode(["a photo of a cat"]), y[:1])
    assert load_text_encoder(None, 4).dim == 384


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


def test_missing_hub_id_names_the_download(no_network):
    with pytest.raises(MissingWeightsError) as e:
        load_text_encoder("t5:starflow-tests/no-such-t5", 8)
    msg = str(e.value)
    assert "starflow-tests/no-such-t5" in msg and "download starflow-tests/no-such-t5 --local-dir" in msg
    assert "t5:<DIR>" in msg
    assert no_network == []


def test_missing_directory_and_bad_specs(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_text_encoder(f"t5:{tmp_path}/nothing", 8)
    with pytest.raises(MissingWeightsError, match="no config.json"):
        load_text_encoder(f"t5:{tmp_path}", 8)
    with pytest.raises(ValueError, match="t5:google/flan-t5-xl"):
        load_text_encoder("google/flan-t5-xl", 8)
    with pytest.raises(ValueError, match="txt_size"):
        load_text_encoder("minilm", 0)
    with pytest.raises(ValueError, match="exceeds"):
        load_text_encoder("minilm", 1000)


def test_official_text_value_mapping():
    assert text_spec_from_official("google/flan-t5-xl") == "t5:google/flan-t5-xl"
    with pytest.raises(ValueError, match="not supported"):
        text_spec_from_official("gemma3_4b")


def test_hub_id_resolves_from_the_local_cache(t5_dir, tmp_path, monkeypatch, no_network):
    """A hub id already in the Hugging Face cache loads offline (what `hf download <id>` without --local-dir gives)."""
    import shutil

    import huggingface_hub.constants as hc

    repo = tmp_path / "models--starflow-tests--tiny-t5"
    shutil.copytree(t5_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    enc = load_text_encoder("t5:starflow-tests/tiny-t5", 12)
    direct = load_text_encoder(f"t5:{t5_dir}", 12)
    torch.testing.assert_close(enc.encode(["cached"]), direct.encode(["cached"]))
    assert no_network == []
