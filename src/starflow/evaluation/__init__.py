"""Evaluation: conformance against the official implementation, benchmarks, the digits classifier, and the
figures of `starflow evaluate` (bpd.py: held-out bits/dim; fid.py + inception.py: FID / KID; clip_score.py;
accuracy.py: prompt accuracy; samples.py: resumable samples; report.py: the table and the JSON report)."""
from .classifier import DigitsClassifier, PromptAccuracy, digit_prompt_accuracy, prompt_accuracy

__all__ = ["DigitsClassifier", "PromptAccuracy", "digit_prompt_accuracy", "prompt_accuracy"]
