import numpy as np
import pytest
import scipy.linalg
import torch

from starflow.data import DigitsDataset
from starflow.evaluation.fid import (dataset_source, extract_features, fid_from_features, folder_source,
                                     kid_from_features)
from starflow.evaluation.inception import INCEPTION_FILE, INCEPTION_URL, load_inception

from .tiny_nets import write_tiny_inception

@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception")
    write_tiny_inception(d)
    return d


@pytest.fixture(scope="module")
def extractor(inception_dir):
    return load_inception(inception_dir)     # the loader of the real file, on a folder holding the tiny one


@pytest.fixture(scope="module")
def digit_features(extractor):
    test = extract_features(extractor, dataset_source(DigitsDataset("test"), "digits test"), progress=False)
    train = extract_features(extractor, dataset_source(DigitsDataset("train"), "digits train"), progress=False)
    return test, train


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The formula, independently: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), scipy's sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_features_come_from_the_loaded_network(extractor, digit_features):
    test, _ = digit_features
    assert test.shape == (297, 16) and test.dtype == torch.float64
    assert test.std(0).min() > 0                                       # a real, varying network output


def test_fid_of_a_set_with_itself_is_zero_and_of_two_sets_positive(digit_features):
    test, train = digit_features
    assert abs(fid_from_features(test, test)) < 1e-6
    same_kind = fid_from_features(test, train)                         # two samples of one distribution
    assert same_kind > 1e-7
    labels = DigitsDataset("train").labels
    zeros, ones = train[labels == 0], train[labels == 1]
    assert fid_from_features(zeros, ones) > 10 * same_kind


def test_fid_equals_the_formula_computed_independently(digit_features):
    test, train = digit_features
    for a, b in ((test, train), (train[:400], test)):
        assert fid_from_features(a, b) == pytest.approx(reference_fid(a.numpy(), b.numpy()), abs=1e-6)


def test_kid_is_reproducible_and_separates_sets(digit_features):
    test, train = digit_features
    same = kid_from_features(test, test, subsets=20, subset_size=100, seed=0)
    other = kid_from_features(test, torch.flip(train, [1]), subsets=20, subset_size=100, seed=0)
    assert other[0] > 100 * abs(same[0])
    assert kid_from_features(test, train, subsets=20, subset_size=100, seed=3) == \
        kid_from_features(test, train, subsets=20, subset_size=100, seed=3)
    assert kid_from_features(test, train, subsets=5, subset_size=5000)[2] == 297   # capped at the smaller set


def test_missing_inception_file_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv("STARFLOW_INCEPTION", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as e:
        load_inception()
    msg = str(e.value)
    assert INCEPTION_FILE in msg and INCEPTION_URL in msg and "--inception" in msg
    assert str(tmp_path / "cache" / "starflow") in msg
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_inception(tmp_path / "nowhere")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_inception(bad)


def test_inception_found_in_the_cache_folder(tmp_path, monkeypatch, inception_dir):
    monkeypatch.delenv("STARFLOW_INCEPTION", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    write_tiny_inception(tmp_path / "starflow")
    assert load_inception().source == str(tmp_path / "starflow" / INCEPTION_FILE)


def test_features_are_cached_in_chunks_and_resume(tmp_path, extractor):
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    g = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(g.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(pics / f"{i}.png")
    Image.fromarray(g.integers(0, 256, (20, 20), dtype=np.uint8)).save(pics / "z_grey_big.png")   # resized
    src = folder_source(pics)
    assert src.count == 8 and src.read(0, 8).shape == (8, 3, 12, 10)
    calls = []

    def counting(x):
        calls.append(len(x))
        return extractor(x)

    full = extract_features(counting, src, tmp_path / "cache", batch_size=2, chunk=3, progress=False)
    assert sum(calls) == 8 and full.shape == (8, 16)
    chunks = sorted((tmp_path / "cache").glob("*/features_*.safetensors"))
    assert len(chunks) == 3
    chunks[-1].unlink()                                                 # as if stopped before the last chunk
    calls.clear()
    again = extract_features(counting, src, tmp_path / "cache", batch_size=2, chunk=3, progress=False)
    assert sum(calls) == 2 and torch.equal(again, full)
