"""A digits classifier and prompt accuracy: does a generated digit show the digit its prompt asked for?

The classifier is a scikit-learn SVM on the 8x8 digit values (0..16), fitted on the training split of
the digits protocol (starflow.data.digits: seeded permutation, first 297 images held out) and scored on
the held-out ones, so its own accuracy is reported beside the generator's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DigitsClassifier", "PromptAccuracy", "pixels_to_digit_values", "prompt_accuracy",
           "digit_prompt_accuracy", "DIGIT_PROMPTS"]

DIGIT_LEVELS = 17   # values 0..16


def _digit_prompts() -> list[str]:
    from ..data.digits import digit_caption
    return [digit_caption(i) for i in range(10)]


DIGIT_PROMPTS = _digit_prompts()   # "a handwritten digit zero" ... "nine", as the training captions


def pixels_to_digit_values(images: torch.Tensor | np.ndarray, dequantized: bool = False) -> np.ndarray:
    """Generated pictures (N, C, H, W) in [-1, 1] -> (N, 64) digit values on the 0..16 scale.

    Sides that are multiples of 8 are average-pooled to 8x8 (the digits data upscales by repeating pixels);
    colour is averaged to grey. `dequantized`: invert x = (v + u) 2/17 - 1 (the likelihood protocol) instead
    of x = v 2/16 - 1 (the official [-1, 1] mapping with Gaussian noise)."""
    x = torch.as_tensor(images).detach().float().cpu()
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % 8 or W % 8:
        raise ValueError(f"digit images must have sides that are multiples of 8, got {H}x{W}")
    x = x.mean(1, keepdim=True)
    if (H, W) != (8, 8):
        x = F.adaptive_avg_pool2d(x, 8)
    if dequantized:
        v = (x + 1) * DIGIT_LEVELS / 2 - 0.5           # the middle of the dequantisation interval
    else:
        v = (x + 1) * (DIGIT_LEVELS - 1) / 2
    return v.clamp(0, DIGIT_LEVELS - 1).reshape(x.size(0), 64).numpy()


class DigitsClassifier:
    """SVM (RBF, gamma 0.001, C 10) on digit values; `test_accuracy` on the held-out protocol split."""

    def __init__(self, model, test_accuracy: float):
        self.model = model
        self.test_accuracy = float(test_accuracy)

    @classmethod
    def fit(cls) -> "DigitsClassifier":
        from sklearn.svm import SVC

        from ..data.digits import digits_split, load_digits_arrays

        values, labels = load_digits_arrays()                     # (1797, 1, 8, 8) uint8, (1797,)
        train, test = digits_split()
        X = values.reshape(len(values), 64).float().numpy()
        y = labels.numpy()
        model = SVC(gamma=0.001, C=10.0).fit(X[train.numpy()], y[train.numpy()])
        acc = float((model.predict(X[test.numpy()]) == y[test.numpy()]).mean())
        return cls(model, acc)

    def predict_values(self, values: np.ndarray) -> np.ndarray:
        """(N, 64) values on the 0..16 scale -> (N,) digits."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != 64:
            raise ValueError(f"expected (N, 64) digit values, got shape {values.shape}")
        return self.model.predict(values)

    def predict(self, images: torch.Tensor | np.ndarray, dequantized: bool = False) -> np.ndarray:
        """Pictures (N, C, H, W) in [-1, 1] -> (N,) digits."""
        return self.predict_values(pixels_to_digit_values(images, dequantized))


@dataclass
class PromptAccuracy:
    accuracy: float                      # share of samples classified as the prompted digit
    per_digit: dict[int, float]          # the same, per prompted digit
    num_samples: int
    classifier_test_accuracy: float
    predictions: np.ndarray = field(repr=False)
    targets: np.ndarray = field(repr=False)


def prompt_accuracy(classifier: DigitsClassifier, images, targets: Sequence[int],
                    dequantized: bool = False) -> PromptAccuracy:
    """Images (N, C, H, W) in [-1, 1] generated for digits `targets` (N,) -> prompt accuracy."""
    targets = np.asarray(targets)
    preds = classifier.predict(images, dequantized)
    if len(preds) != len(targets) or len(targets) == 0:
        raise ValueError(f"{len(preds)} images for {len(targets)} target digits")
    hits = preds == targets
    per = {int(d): float(hits[targets == d].mean()) for d in np.unique(targets)}
    return PromptAccuracy(float(hits.mean()), per, len(targets), classifier.test_accuracy, preds, targets)


def digit_prompt_accuracy(pipeline, classifier: DigitsClassifier | None = None, samples_per_prompt: int = 20,
                          seed: int = 0, dequantized: bool = False, prompts: Sequence[str] | None = None,
                          **call_kwargs) -> tuple[PromptAccuracy, torch.Tensor]:
    """Sample `samples_per_prompt` digits for each of the ten digit prompts with a text-to-image pipeline and
    classify them. Returns the accuracy and the images (10 * samples_per_prompt, C, H, W) in [-1, 1],
    prompt-major (all zeros first). prompts: the ten prompts for digits 0..9 (default: the training
    captions; "0".."9" for a label-conditioned model)."""
    if samples_per_prompt < 1:
        raise ValueError("samples_per_prompt must be >= 1")
    prompts = list(prompts) if prompts is not None else DIGIT_PROMPTS
    if len(prompts) != 10:
        raise ValueError(f"need ten prompts, for digits 0..9; got {len(prompts)}")
    classifier = classifier or DigitsClassifier.fit()
    out = pipeline(prompts, num_images_per_prompt=samples_per_prompt, seed=seed, output_type="pt",
                   **call_kwargs)
    images = out.images * 2 - 1
    targets = np.repeat(np.arange(10), samples_per_prompt)
    return prompt_accuracy(classifier, images, targets, dequantized), images
