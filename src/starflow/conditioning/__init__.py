"""Conditioning: frozen text encoders (T5, bundled MiniLM), class labels, official prompt templates."""
from .labels import LabelEncoder
from .offline import MissingWeightsError, resolve_pretrained
from .templates import apply_templates
from .text import HFTextEncoder, TextEncoder, load_text_encoder, text_spec_from_official

__all__ = ["load_text_encoder", "TextEncoder", "HFTextEncoder", "LabelEncoder", "apply_templates",
           "MissingWeightsError", "resolve_pretrained", "text_spec_from_official"]
