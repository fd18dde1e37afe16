"""Weight converters from other code bases into segzoo models.

Each converter takes a source state dict (already read, e.g. with
:func:`segzoo.checkpoint.read_state_dict`) and returns a built segzoo model with the
weights loaded; ``num_classes`` is read from the source.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# CLI name -> (module, function); modules are imported on first use
SOURCES = {
    "torchvision": ("segzoo.convert.torchvision", "from_torchvision"),
    "hrnet-official": ("segzoo.convert.hrnet", "from_hrnet_official"),
    "centernet-official": ("segzoo.convert.centernet", "from_centernet_official"),
}


def converter(source: str):
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    module, fn = SOURCES[source]
    return getattr(importlib.import_module(module), fn)


def from_torchvision(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    return converter("torchvision")(state_dict, name, **build_kwargs)


def from_hrnet_official(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    return converter("hrnet-official")(state_dict, name, **build_kwargs)


def from_centernet_official(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    return converter("centernet-official")(state_dict, name, **build_kwargs)


__all__ = ["SOURCES", "converter", "from_centernet_official", "from_hrnet_official",
           "from_torchvision"]
