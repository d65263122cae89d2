from types import SimpleNamespace

import pytest

from starflow.evaluation import accuracy as pa
from starflow.evaluation.classifier import PromptAccuracy
from starflow.pipelines import PipelineDefaults, StarFlowPipeline


def _video_pipe():
    return SimpleNamespace(kind="video", config=SimpleNamespace(txt_dim=41), text_encoder_spec="labels:40",
                           input_transform=None, training_info=None, defaults=PipelineDefaults())


def test_video_models_need_moving_digits():
    with pytest.raises(ValueError, match="needs a model trained on them"):
        pa.evaluate_prompt_accuracy(_video_pipe(), samples_per_prompt=2)


def test_the_frame_reader_plugs_in_by_one_function(monkeypatch):
    import numpy as np

    calls = []

    def reader(pipe, samples_per_prompt, seed, call):
        calls.append((samples_per_prompt, seed))
        t = np.repeat(np.arange(40), samples_per_prompt)
        return PromptAccuracy(0.5, {0: 0.5}, len(t), 0.99, t, t), None

    monkeypatch.setattr(pa, "video_prompt_accuracy", reader)
    out = pa.evaluate_prompt_accuracy(_video_pipe(), samples_per_prompt=3, seed=7)
    assert calls == [(3, 7)] and out["accuracy"] == 0.5 and out["num_samples"] == 120


def test_digits_prompt_accuracy_needs_a_digits_model(trained_digits):
    pipe = StarFlowPipeline.from_trained(trained_digits[0])
    out = pa.evaluate_prompt_accuracy(pipe, samples_per_prompt=1, seed=0)
    assert out["num_samples"] == 10 and out["prompts"] == [str(d) for d in range(10)] and out["dequantized_pixels"]
    pipe.training_info["train"]["data"].update(dataset="image_folder", path="somewhere")
    with pytest.raises(ValueError, match="digits classifier"):
        pa.evaluate_prompt_accuracy(pipe, samples_per_prompt=1)
