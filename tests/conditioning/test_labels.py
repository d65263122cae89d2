"""Class-label conditioning: one-hot with a null class, as the official label embedder."""
import pytest
import torch

from starflow.conditioning import LabelEncoder, load_text_encoder


def test_spec_gives_one_token_of_num_classes_plus_one():
    enc = load_text_encoder("labels:10", 1)
    assert isinstance(enc, LabelEncoder)
    assert (enc.dim, enc.length, enc.num_classes) == (11, 1, 10)


def test_encode_indices_strings_and_tensors():
    enc = LabelEncoder(10)
    y = enc.encode([3, 0])
    assert y.shape == (2, 1, 11) and y.dtype == torch.float32
    assert torch.equal(y[:, 0], torch.eye(11)[[3, 0]])
    assert torch.equal(enc.encode(["3", "0"]), y)
    assert torch.equal(enc.encode(torch.tensor([3, 0])), y)
    # a dropped caption ("") and null() both give the null class, index num_classes
    assert torch.equal(enc.encode(["", "7"])[0, 0], torch.eye(11)[10])
    assert torch.equal(enc.null(2), torch.eye(11)[[10, 10]].unsqueeze(1))


def test_frozen_and_movable():
    enc = LabelEncoder(4).to("cpu")
    enc.train()
    assert not enc.training
    assert not enc.encode([1]).requires_grad


def test_bad_labels_raise():
    enc = LabelEncoder(10)
    with pytest.raises(ValueError, match="out of range"):
        enc.encode([11])
    with pytest.raises(ValueError, match="out of range"):
        enc.encode([-1])
    with pytest.raises(ValueError, match="not an integer"):
        enc.encode(["a cat"])
    with pytest.raises(TypeError, match="integer tensor"):
        enc.encode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="no prompt templates"):
        enc.encode([1], fps=16)
    with pytest.raises(ValueError, match="txt_size must be 1"):
        load_text_encoder("labels:10", 4)
    with pytest.raises(ValueError, match="labels:<num_classes>"):
        load_text_encoder("labels:ten", 1)
