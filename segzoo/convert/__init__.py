"""Weight converters from other code bases into segzoo models.

Each converter takes a source state dict (already read, e.g. with
:func:`segzoo.checkpoint.read_state_dict`) and returns a built segzoo model with the
weights loaded; ``num_classes`` is read from the source. The key mapping is chosen by the
class of the model the name builds, never by the name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from segzoo.convert.centernet import from_centernet_official
from segzoo.convert.hrnet import from_hrnet_official
from segzoo.convert.huggingface import from_huggingface, from_smp
from segzoo.convert.torchvision import from_torchvision

#: CLI source name -> converter
SOURCES: dict[str, Callable[..., nn.Module]] = {
    "torchvision": from_torchvision,
    "hrnet-official": from_hrnet_official,
    "centernet-official": from_centernet_official,
    "huggingface": from_huggingface,
    "smp": from_smp,
}


def converter(source: str) -> Callable[..., nn.Module]:
    """The converter of a source (a key of :data:`SOURCES`)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[source]


__all__ = ["SOURCES", "converter", "from_centernet_official", "from_hrnet_official", "from_huggingface",
           "from_smp", "from_torchvision"]
