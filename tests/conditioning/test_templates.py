"""The official prompt templates, string for string, in the official order."""
import pytest
import torch

from starflow.conditioning import apply_templates


def test_no_templates_leaves_prompts_alone():
    assert apply_templates(["a cat", ""]) == ["a cat", ""]


def test_fps_template_video_and_image():
    assert apply_templates(["a cat"], fps=16) == ["A video with 16 fps:\na cat\n"]
    assert apply_templates(["a cat"], fps=0) == ["An image:\na cat\n"]
    # per-prompt fps, as a tensor (the official data loader passes meta['fps'] tensors)
    assert apply_templates(["a", "b"], fps=torch.tensor([24, 0])) == ["A video with 24 fps:\na\n", "An image:\nb\n"]


def test_noise_level_template_uses_int_of_sigma_times_1000():
    assert apply_templates(["a cat"], noise_std=0.3) == ["Noise Level 300:\na cat"]
    assert apply_templates(["a cat"], noise_std=0.5) == ["Noise Level 500:\na cat"]
    # float32 tensors truncate like the official int(n * 1000): 0.7 -> 699
    assert apply_templates(["x"], noise_std=torch.tensor([0.7])) == ["Noise Level 699:\nx"]


def test_aspect_ratio_template():
    assert apply_templates(["a cat"], aspect_ratio="16:9") == ["a cat\n in a 16:9 aspect ratio.\n"]


def test_all_templates_apply_in_official_order():
    out = apply_templates(["a cat"], fps=24, noise_std=0.5, aspect_ratio="16:9")
    assert out == ["Noise Level 500:\nA video with 24 fps:\na cat\n\n in a 16:9 aspect ratio.\n"]


def test_empty_prompt_goes_through_templates():
    assert apply_templates(["", ""], fps=16, noise_std=0.3) == ["Noise Level 300:\nA video with 16 fps:\n\n"] * 2


def test_per_prompt_values_and_broadcast():
    assert apply_templates(["a", "b"], noise_std=[0.1, 0.2]) == ["Noise Level 100:\na", "Noise Level 200:\nb"]
    assert apply_templates(["a", "b"], aspect_ratio=["1:1", "9:16"])[1] == "b\n in a 9:16 aspect ratio.\n"
    assert apply_templates(["a", "b"], fps=[8]) == ["A video with 8 fps:\na\n", "A video with 8 fps:\nb\n"]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="list of strings"):
        apply_templates("a cat", fps=8)
    with pytest.raises(ValueError, match="3 values for 2 prompts"):
        apply_templates(["a", "b"], fps=[1, 2, 3])
    with pytest.raises(TypeError, match="aspect_ratio"):
        apply_templates(["a"], aspect_ratio=1.5)
    with pytest.raises(ValueError, match="fps must be >= 0"):
        apply_templates(["a"], fps=-1)
    with pytest.raises(TypeError, match="prompt must be a string"):
        apply_templates(["a", 3])
