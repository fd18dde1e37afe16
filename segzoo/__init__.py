"""segzoo: a pure-PyTorch model zoo of segmentation and detection architectures.

The public names are imported on first use (``segzoo.build`` imports the registry and the model
families then), so ``import segzoo`` and ``segzoo --help`` import no torch. ``segzoo.convert``,
``segzoo.data`` and the other sub-packages are reached the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from segzoo.spec import TASKS, ModelSpec  # the lowest layer: imports nothing from segzoo (nor torch)
from segzoo.version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "build": "segzoo.registry", "list_models": "segzoo.registry", "load": "segzoo.registry",
    "register_model": "segzoo.registry", "load_weights": "segzoo.checkpoint", "save": "segzoo.checkpoint",
    "fuse": "segzoo.fuse", "list_weights": "segzoo.hub.published", "predict": "segzoo.inference",
    "optimize": "segzoo.optimize", "quantize": "segzoo.quantize",
}

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


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        if _PUBLIC[name] == "segzoo.registry":
            importlib.import_module("segzoo.models")  # registers every entrypoint
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a sub-package: segzoo.convert, segzoo.data...
    else:
        raise AttributeError(f"module 'segzoo' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``segzoo.fuse``, ``segzoo.optimize`` and ``segzoo.quantize`` are functions that share their module's name:
    importing the module (``from segzoo.fuse import fuse``) must not replace the function on the package."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
