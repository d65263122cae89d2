import numpy as np
import pytest
import torch

from starflow.data.digits import digits_split, load_digits_arrays
from starflow.evaluation.classifier import (DIGIT_PROMPTS, DigitsClassifier, digit_prompt_accuracy,
                                            pixels_to_digit_values, prompt_accuracy)


@pytest.fixture(scope="module")
def classifier():
    return DigitsClassifier.fit()


@pytest.fixture(scope="module")
def test_digits():
    values, labels = load_digits_arrays()
    _, test = digits_split()
    return values[test], labels[test]


def test_classifier_is_accurate_on_held_out_digits(classifier):
    assert classifier.test_accuracy >= 0.97


def test_pixels_round_trip_to_digit_values(classifier, test_digits):
    values, labels = test_digits
    x = values.float() * (2 / 16) - 1                                  # the official [-1, 1] mapping
    np.testing.assert_allclose(pixels_to_digit_values(x), values.reshape(-1, 64).float().numpy(), atol=1e-5)
    deq = (values.float() + 0.5) * (2 / 17) - 1                        # the likelihood protocol's mapping
    np.testing.assert_allclose(pixels_to_digit_values(deq, dequantized=True), values.reshape(-1, 64).numpy(),
                               atol=1e-4)
    big = x.repeat_interleave(2, -1).repeat_interleave(2, -2).expand(-1, 3, -1, -1)   # 16x16 RGB
    np.testing.assert_allclose(pixels_to_digit_values(big), pixels_to_digit_values(x), atol=1e-5)
    acc = prompt_accuracy(classifier, x, labels.numpy())
    assert acc.accuracy == pytest.approx(classifier.test_accuracy) and acc.num_samples == 297
    assert min(acc.per_digit.values()) >= 0.9


def test_wrong_prompts_score_low(classifier, test_digits):
    values, labels = test_digits
    x = values.float() * (2 / 16) - 1
    assert prompt_accuracy(classifier, x, (labels.numpy() + 1) % 10).accuracy < 0.05


class DigitsFromTheDataset:
    """A pipeline stand-in that 'generates' held-out digits of the prompted class (or one fixed digit)."""

    def __init__(self, test_digits, always=None):
        self.values, self.labels = test_digits
        self.always = always
        self.calls = []

    def __call__(self, prompts, num_images_per_prompt, seed, output_type, **kw):
        self.calls.append((list(prompts), num_images_per_prompt, output_type))
        out = []
        for i, _ in enumerate(prompts):
            digit = self.always if self.always is not None else i
            pool = self.values[self.labels == digit][:num_images_per_prompt]
            out.append(pool.float() / 16)                              # 'pt' output: [0, 1]
        return type("Out", (), {"images": torch.cat(out)})()


def test_digit_prompt_accuracy(classifier, test_digits):
    pipe = DigitsFromTheDataset(test_digits)
    acc, images = digit_prompt_accuracy(pipe, classifier, samples_per_prompt=20)
    assert pipe.calls == [(DIGIT_PROMPTS, 20, "pt")]
    assert DIGIT_PROMPTS[0] == "a handwritten digit zero" and DIGIT_PROMPTS[9] == "a handwritten digit nine"
    assert images.shape == (200, 1, 8, 8) and acc.num_samples == 200
    assert acc.accuracy >= 0.95
    stuck, _ = digit_prompt_accuracy(DigitsFromTheDataset(test_digits, always=3), classifier, samples_per_prompt=20)
    assert stuck.accuracy == pytest.approx(0.1, abs=0.02) and stuck.per_digit[3] >= 0.9


def test_bad_input(classifier):
    with pytest.raises(ValueError, match="multiples of 8"):
        classifier.predict(torch.zeros(2, 1, 6, 6))
    with pytest.raises(ValueError, match="2 images for 3 target digits"):
        prompt_accuracy(classifier, torch.zeros(2, 1, 8, 8), [1, 2, 3])
    with pytest.raises(ValueError, match="samples_per_prompt"):
        digit_prompt_accuracy(lambda *a, **k: None, classifier, samples_per_prompt=0)
