"""segzoo: a pure-PyTorch model zoo of segmentation and detection architectures."""

__version__ = "0.1.0"

from segzoo.checkpoint import load, load_weights, save  # noqa: E402
from segzoo.fuse import fuse  # noqa: E402
from segzoo.inference import predict  # noqa: E402
from segzoo.registry import ModelSpec, build, list_models, register_model  # noqa: E402

__all__ = [
    "ModelSpec",
    "__version__",
    "build",
    "fuse",
    "list_models",
    "load",
    "load_weights",
    "predict",
    "register_model",
    "save",
]
