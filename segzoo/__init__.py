"""segzoo: a pure-PyTorch model zoo of segmentation and detection architectures."""

import segzoo.models  # noqa: F401  (registers every entrypoint)
from segzoo import convert  # segzoo.convert.from_torchvision and friends
from segzoo.checkpoint import load_weights, save
from segzoo.fuse import fuse
from segzoo.hub.published import list_weights
from segzoo.inference import predict
from segzoo.optimize import optimize
from segzoo.quantize import quantize
from segzoo.registry import build, list_models, load, register_model
from segzoo.spec import TASKS, ModelSpec  # the lowest layer: imports nothing from segzoo
from segzoo.version import __version__

__all__ = [
    "TASKS",
    "ModelSpec",
    "__version__",
    "build",
    "convert",
    "fuse",
    "list_models",
    "list_weights",
    "load",
    "load_weights",
    "optimize",
    "predict",
    "quantize",
    "register_model",
    "save",
]
