"""Weight converters from other code bases into segzoo models: the public façade.

Each converter takes a source state dict (already read, e.g. with
:func:`segzoo.checkpoint.read_state_dict`) and returns a built segzoo model with the
weights loaded; ``num_classes`` is read from the source. The key mapping is chosen by the
class of the model the name builds, never by the name. The key maps live beside their
families in :mod:`segzoo.models` (``segzoo.models.hrnet.map_hrnet_official``,
``segzoo.models.mask_rcnn.map_rcnn``, ...; the shared machinery is
:mod:`segzoo.models.converters`), which register them as sources of
:data:`segzoo.hub.published.SOURCES`; this module names them for users.
"""

from __future__ import annotations

from segzoo.hub.published import SOURCES, converter
from segzoo.models.centernet import from_centernet_official
from segzoo.models.converters import from_huggingface, from_torchvision
from segzoo.models.hrnet import from_hrnet_official
from segzoo.models.segformer import from_smp

__all__ = ["SOURCES", "converter", "from_centernet_official", "from_hrnet_official", "from_huggingface",
           "from_smp", "from_torchvision"]
