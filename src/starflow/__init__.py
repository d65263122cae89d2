"""starflow: transformer autoregressive normalizing flows (STARFlow, STARFlow-V)."""
from .config import ModelConfig, ConfigError
from .flow.model import StarFlow, FlowOutput
from .flow.io import load_official, build_model, CheckpointError

__version__ = "0.2.0"
__all__ = ["ModelConfig", "ConfigError", "StarFlow", "FlowOutput", "load_official", "build_model", "CheckpointError"]
