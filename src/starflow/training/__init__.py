"""Training: typed config, the loop (DDP / FSDP2), checkpoints, EMA, plots.

    from starflow.training import load_train_config, train, load_trained
    cfg = load_train_config("configs/digits_class_cond.yaml", ["optim.max_steps=100"])
    result = train(cfg)                 # TrainResult(checkpoint_dir, steps, test_bpd, model, metrics, ...)
    model, cfg = load_trained(result.checkpoint_dir)
    # likelihood configs may model t = T(x) (data.logit_alpha / data.gaussianize): samples need T's inverse
    transform = load_transform(json.load(open(dir / "config.json"))["input_transform"], dir)  # or None
"""
from .checkpoint import CheckpointManager, load_trained, save_trained
from .config import DataConfig, DistConfig, LogConfig, OptimConfig, TrainConfig, apply_overrides, load_train_config
from .ema import EMA
from .trainer import TrainModule, TrainResult, Trainer, train
from .transforms import Gaussianize, LogitTransform, load_transform

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "LogConfig", "DistConfig", "load_train_config",
           "apply_overrides", "train", "TrainResult", "Trainer", "TrainModule", "load_trained", "save_trained",
           "CheckpointManager", "EMA", "Gaussianize", "LogitTransform", "load_transform"]
