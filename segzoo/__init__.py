"""segzoo: a pure-PyTorch model zoo of segmentation and detection architectures."""

__version__ = "0.1.0"

import segzoo.models  # noqa: E402, F401  (registers every entrypoint)
from segzoo import convert  # noqa: E402  (segzoo.convert.from_torchvision and friends)
from segzoo.checkpoint import load, load_weights, save  # noqa: E402
from segzoo.fuse import fuse  # noqa: E402
from segzoo.inference import predict  # noqa: E402
from segzoo.published import list_weights  # noqa: E402
from segzoo.registry import build, list_models, register_model  # noqa: E402
from segzoo.spec import TASKS, ModelSpec  # noqa: E402  (the lowest layer: imports nothing from segzoo)

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
    "predict",
    "register_model",
    "save",
]
