"""Training and evaluation: build a run once (:mod:`~segzoo.engine.build`), loop over it with one Trainer for
every task, driven by typed configs; one evaluate."""

from segzoo.engine.build import build_trainer
from segzoo.engine.ema import ModelEma
from segzoo.engine.evaluator import evaluate, save_predictions_png
from segzoo.engine.run import train_from_config
from segzoo.engine.run_folder import RunFolder, RunFolderError
from segzoo.engine.signals import TrainingInterrupted
from segzoo.engine.trainer import NonFiniteLossError, Trainer, TrainParts

__all__ = ["ModelEma", "NonFiniteLossError", "RunFolder", "RunFolderError", "TrainParts", "Trainer",
           "TrainingInterrupted", "build_trainer", "evaluate", "save_predictions_png", "train_from_config"]
