"""Training: typed config, the loop (DDP / FSDP2), checkpoints, EMA, plots.

    from starflow.training import load_train_config, train, load_trained
    cfg = load_train_config("configs/digits_class_cond.yaml", ["optim.max_steps=100"])
    result = train(cfg)                 # TrainResult(checkpoint_dir, steps, test_bpd, model, metrics, ...)
    pipe = StarFlowPipeline.from_pretrained(result.checkpoint_dir)   # the exported pipeline folder (final/)
    model, cfg = load_trained(result.checkpoint_dir)                # or the flow and the run's TrainConfig
"""
from .checkpoint import CheckpointManager, MetricsLog, load_trained
from .config import DataConfig, DistConfig, LogConfig, OptimConfig, TrainConfig, apply_overrides, load_train_config
from .ema import EMA
from .loop import train
from .trainer import Progress, TrainModule, TrainResult, Trainer

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "LogConfig", "DistConfig", "load_train_config",
           "apply_overrides", "train", "TrainResult", "Trainer", "TrainModule", "Progress", "load_trained",
           "CheckpointManager", "MetricsLog", "EMA"]
