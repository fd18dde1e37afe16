"""Training and evaluation: one Trainer for every task, driven by YAML configs."""

from segzoo.engine.evaluator import evaluate, save_predictions_png
from segzoo.engine.run import train_from_config
from segzoo.engine.trainer import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "Trainer", "evaluate", "save_predictions_png", "train_from_config"]
