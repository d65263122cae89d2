"""Evaluation: conformance against the official implementation, benchmarks, the digits classifier."""
from .classifier import DigitsClassifier, PromptAccuracy, digit_prompt_accuracy, prompt_accuracy

__all__ = ["DigitsClassifier", "PromptAccuracy", "digit_prompt_accuracy", "prompt_accuracy"]
