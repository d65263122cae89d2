"""Prompt accuracy: does a generated digit (or moving digit) show what its prompt asked for?

Digits: the demo's classifier (`classifier.py`, an SVM on the 8x8 values) on `samples_per_prompt` samples of each
of the ten digit prompts. Moving digits: the frame reader of `starflow evaluate-video` (`video_reader.py`) on
`samples_per_prompt` videos of each of the 40 (digit, direction) prompts; a video counts as right when the digit
most of its frames show is the prompted one.
"""
from __future__ import annotations

from typing import Any

__all__ = ["evaluate_prompt_accuracy", "video_prompt_accuracy"]


def _dequantized(pipe) -> bool:
    """Was the model trained on dequantised pixels x = (v + u) 2/L - 1 (rather than x = v 2/(L-1) - 1)?"""
    from .sources import train_config_of

    tc = train_config_of(pipe)
    return bool((tc is not None and tc.data.dequantize) or pipe.input_transform is not None)


def video_prompt_accuracy(pipe, samples_per_prompt: int, seed: int, call: dict[str, Any]):
    """Moving digits, read by the frame reader (video_eval). Returns (PromptAccuracy, frames)."""
    from .video_eval import video_prompt_accuracy as read_videos

    return read_videos(pipe, samples_per_prompt, seed, call)


def evaluate_prompt_accuracy(pipe, samples_per_prompt: int = 20, seed: int = 0, batch_size: int | None = None,
                             call: dict[str, Any] | None = None) -> dict[str, Any]:
    """-> {"accuracy", "per_prompt", "num_samples", "classifier_test_accuracy", "prompts", ...}."""
    from .classifier import DIGIT_PROMPTS, digit_prompt_accuracy
    from .samples import resolved_call
    from .sources import condition_of, train_config_of

    call = {k: v for k, v in (call or {}).items() if v is not None}
    mode = condition_of(pipe)
    if mode == "none":
        raise ValueError("prompt accuracy needs a conditional model (class labels or text prompts)")
    if pipe.kind == "video":
        acc, _ = video_prompt_accuracy(pipe, samples_per_prompt, seed, call)
        prompts = None
    else:
        tc = train_config_of(pipe)
        if tc is not None and tc.data.dataset != "digits":
            raise ValueError(f"prompt accuracy uses the digits classifier: this model was trained on "
                             f"{tc.data.dataset}, not on digits")
        prompts = [str(d) for d in range(10)] if mode == "labels" else DIGIT_PROMPTS
        acc, _ = digit_prompt_accuracy(pipe, None, samples_per_prompt, seed, _dequantized(pipe), prompts=prompts,
                                       batch_size=batch_size, progress=False, **call)
    return {"accuracy": acc.accuracy, "per_prompt": {str(k): v for k, v in acc.per_digit.items()},
            "num_samples": acc.num_samples, "samples_per_prompt": samples_per_prompt, "seed": seed,
            "classifier": "SVM (RBF) on the 8x8 digit values, fitted on the digits training split",
            "classifier_test_accuracy": acc.classifier_test_accuracy, "prompts": prompts,
            "dequantized_pixels": _dequantized(pipe), "batch_size": batch_size,
            "noise": "one CPU torch.Generator seeded by seed, for all samples", **resolved_call(pipe, call)}
