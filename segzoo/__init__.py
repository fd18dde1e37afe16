"""segzoo: a pure-PyTorch model zoo of segmentation and detection architectures."""

import segzoo.models  # noqa: F401  (registers every entrypoint)
from segzoo import convert  # segzoo.convert.from_torchvision and friends
from segzoo.checkpoint import load_weights, save
from segzoo.fuse import fuse
from segzoo.inference import predict
from segzoo.optimize import optimize
from segzoo.published import list_weights
from segzoo.quantize import quantize
from segzoo.registry import build, list_models, load, register_model, set_pretrained_source
from segzoo.spec import TASKS, ModelSpec  # the lowest layer: imports nothing from segzoo
from segzoo.version import __version__
from segzoo.weights import pretrained_state

set_pretrained_source(pretrained_state)  # build(name, weights=TAG): the published tables sit above the models

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
