"""The table of published weights: what each model family can be given as ``weights=TAG``.

Every family registers the published checkpoints that fit its models with
:func:`register_weights`: a tag, the source, dataset, class names, input statistics,
reported metric and licence. Names are ``model.tag`` (as timm's ``resnet50.a1_in1k``):
``deeplabv3_resnet50.tv_coco_voc``. Fetching, converting and caching them is
:mod:`segzoo.hub.weights`' job.

Each family also registers the converters of its sources beside its key maps
(:func:`register_converter`: ``"hrnet-official"`` -> ``from_hrnet_official``), so an entry's
``converter`` names a function that the hub calls without importing the models: the table sits
below them, as the weights rows do.

The families fill these tables (and the model registry) when :mod:`segzoo.models` is imported.
``import segzoo`` does not import them up front (it imports no torch), so every reader of the
tables calls :func:`load_families` first: the one place that imports the families by name.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn
from torchvision.models import get_weight

from segzoo.hub.cache import WeightsError
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

SOURCE_KINDS = ("torchvision", "manual", "huggingface")
TORCHVISION_LICENCE = ("BSD-3-Clause (torchvision); trained on COCO, whose annotations are CC BY 4.0 "
                       "and images carry their own terms")
TORCHVISION_PAGE = "https://pytorch.org/vision/stable/models.html"
# dataset descriptions and class lists shared by the families' tables
COCO_VOC = "COCO train2017, the 20 Pascal VOC categories (+ background)"
COCO_90 = "COCO train2017 (80 categories on COCO's 90 ids)"
# COCO's 80 categories in category-id order (the official CenterNet label order), from torchvision's list
COCO_80 = tuple(c for c in get_weight("FasterRCNN_ResNet50_FPN_Weights.COCO_V1").meta["categories"]
                if c not in ("__background__", "N/A"))
# COCO panoptic's 133 categories as the universal models number them: the 80 things (as COCO_80), then the
# 53 stuff categories of panoptic_coco_categories.json in id order (ids 92-200; "-merged" ones merge stuff classes)
COCO_PANOPTIC_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit",
    "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged",
    "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged",
    "pavement-merged", "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)
COCO_PANOPTIC = COCO_80 + COCO_PANOPTIC_STUFF


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint that fits a segzoo model.

    Attributes:
        model: the segzoo model it converts into, e.g. ``"deeplabv3_resnet50"``.
        tag: short name, unique per model; ``model.tag`` names the weights.
        source: ``"torchvision"`` (downloaded through torchvision's ``Weights`` enum),
            ``"huggingface"`` (a Hugging Face hub repository, read from the hub cache as timm
            bodies are) or ``"manual"`` (a host segzoo cannot download from: the user fetches the file).
        converter: the source whose converter turns the file into segzoo's layout (a key of
            :data:`SOURCES`, e.g. ``"torchvision"``; ``segzoo convert --from`` takes the same names).
        dataset: what it was trained on.
        classes: class names in segzoo's label order (label ``i`` is ``classes[i]``).
        mean, std: the input statistics the converted model applies to [0, 1] RGB input.
        metrics: the reported numbers, ``(("miou", 66.4), ...)``.
        metric_source: where the numbers are reported, and on which split.
        licence: the source's licence terms.
        file_name: the file's name as published (torch.hub's cache name for torchvision).
        page: the page that links the file.
        link: the file's own link when it differs from ``page`` (manual sources).
        torchvision: the ``Weights`` enum member, ``"FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1"``;
            its URL, hash, categories and metrics are read from it.
        size: the file's size in bytes, where the source publishes it.
        sha256: the file's full sha256, where the source publishes it.
        convert_kwargs: extra converter arguments, as ``(key, value)`` pairs.
        hf_repo: the Hugging Face hub repository (``"huggingface"`` entries only);
            ``file_name`` is then the name of a copy downloaded by hand.
        hf_files: the repository's weight files, tried in this order.
    """

    model: str
    tag: str
    source: str
    converter: str
    dataset: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    metrics: tuple[tuple[str, float], ...]
    metric_source: str
    licence: str
    file_name: str
    page: str
    link: str | None = None
    torchvision: str | None = None
    size: int | None = None
    sha256: str | None = None
    convert_kwargs: tuple[tuple[str, Any], ...] = ()
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"source must be one of {SOURCE_KINDS}, got {self.source!r}")
        if (self.source == "torchvision") != (self.torchvision is not None):
            raise ValueError("torchvision entries name their Weights enum member, and only they do")
        if (self.source == "huggingface") != (self.hf_repo is not None):
            raise ValueError("huggingface entries name their hub repository, and only they do")
        if "." in self.tag or not self.tag:
            raise ValueError(f"a tag is a non-empty name without dots, got {self.tag!r}")

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    def weights_enum(self):
        """The torchvision ``Weights`` enum member (torchvision entries only)."""
        return get_weight(self.torchvision)

    @property
    def url(self) -> str | None:
        """The download URL: torchvision's, read from its enum; the hub's for Hugging Face entries
        (its first file); None for manual sources."""
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_files[0]}"
        return self.weights_enum().url if self.torchvision else None


def torchvision_entry(model: str, tag: str, weights: str, dataset: str, detection: bool = False) -> WeightsEntry:
    """A table entry read from a torchvision ``Weights`` enum member (nothing retyped).

    Args:
        weights: the member's name, ``"DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1"``.
        detection: torchvision detection labels are 1-based with ``__background__`` at 0;
            segzoo's are 0-based, so its class ``i`` is torchvision's ``i + 1`` (the
            converter drops the background outputs). ``"N/A"`` marks COCO ids without a
            category, kept so that every label id lines up.
    """
    w = get_weight(weights)
    categories = list(w.meta["categories"])
    transform = w.transforms()
    ((split, metrics),) = w.meta["_metrics"].items()
    return WeightsEntry(
        model=model, tag=tag, source="torchvision", converter="torchvision", torchvision=weights,
        dataset=dataset, classes=tuple(categories[1:] if detection else categories),
        mean=tuple(getattr(transform, "mean", IMAGENET_MEAN)), std=tuple(getattr(transform, "std", IMAGENET_STD)),
        metrics=tuple(metrics.items()), metric_source=f"torchvision {weights} ({split}; recipe {w.meta['recipe']})",
        licence=TORCHVISION_LICENCE, file_name=os.path.basename(w.url), page=TORCHVISION_PAGE,
    )


# ---------------------------------------------------------------------------- the converters

Converter = Callable[..., nn.Module]  # (source state dict, segzoo model name, **build kwargs) -> built model
_SOURCES: dict[str, Converter] = {}
#: source name (``segzoo convert --from NAME``) -> its converter, as the families registered them
SOURCES: Mapping[str, Converter] = MappingProxyType(_SOURCES)


def load_families() -> None:
    """Import segzoo's model families unless they are (being) imported: they register their models, weights rows and
    converters. Called by every reader of these tables and of the model registry, so that ``from segzoo.registry
    import build`` finds the models in a process where nothing imported :mod:`segzoo.models`."""
    if "segzoo.models" not in sys.modules:
        importlib.import_module("segzoo.models")  # by name: the families sit above this table


def register_converter(source: str, fn: Converter) -> Converter:
    """Register the converter of ``source`` (a family does it beside its key maps); returns ``fn``.

    Raises:
        ValueError: ``source`` already has another converter.
    """
    if not source or not isinstance(source, str):
        raise ValueError(f"a converter source is a non-empty name, got {source!r}")
    if _SOURCES.get(source, fn) is not fn:
        raise ValueError(f"the converter source {source!r} is registered twice ({_SOURCES[source].__module__} "
                         f"and {fn.__module__}); give one of them another name")
    _SOURCES[source] = fn
    return fn


def converter(source: str) -> Converter:
    """The converter of a source (a key of :data:`SOURCES`)."""
    load_families()
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(_SOURCES)}")
    return _SOURCES[source]


# ---------------------------------------------------------------------------- the table

_TABLE: dict[str, WeightsEntry] = {}


def register_weights(*entries: WeightsEntry) -> None:
    """Add entries to the table; a name registered twice, or a converter source that no family has
    registered (:func:`register_converter`, beside the family's key maps), raises."""
    for e in entries:
        if e.name in _TABLE:
            raise ValueError(f"weights {e.name!r} are registered twice; give one of them another tag")
        if e.converter not in _SOURCES:
            raise ValueError(f"weights {e.name!r} name the converter {e.converter!r}, which is not registered "
                             f"({', '.join(_SOURCES) or 'none yet'}); register_converter() it before the weights")
        _TABLE[e.name] = e


def list_weights(pattern: str = "*") -> list[str]:
    """Sorted ``model.tag`` names of the published weights matching a shell-style pattern.

    ``segzoo.list_weights("deeplabv3*")``; :func:`get_weights` gives an entry's details.
    """
    load_families()
    return sorted(n for n in _TABLE if fnmatch.fnmatch(n, pattern))


def get_weights(name: str) -> WeightsEntry:
    """The table entry of ``model.tag``."""
    load_families()
    table = _TABLE  # filled by the families when segzoo.models is imported
    if name not in table:
        model = name.split(".")[0]
        tags = [e.tag for e in table.values() if e.model == model]
        hint = (f"{model} has {', '.join(tags)}" if tags else
                "segzoo.list_weights() or `segzoo weights list` shows them all")
        raise WeightsError(f"no published weights named {name!r}; {hint}")
    return table[name]


def resolve(model: str, tag: str) -> WeightsEntry:
    """The entry for ``build(model, weights=tag)``: ``tag``, ``model.tag`` or ``"default"``
    (the first registered for the model)."""
    load_families()
    table = _TABLE  # filled by the families when segzoo.models is imported
    own = [e for e in table.values() if e.model == model]
    if tag == "default" and own:
        return own[0]
    if tag.startswith(model + "."):
        tag = tag[len(model) + 1:]
    for e in own:
        if e.tag == tag:
            return e
    listed = f"its weights are {', '.join(e.tag for e in own)}" if own else "it has no published weights"
    others = [e.name for e in table.values() if e.tag == tag or e.name == tag]
    also = f" ({', '.join(others)} belong to other models)" if others else ""
    raise WeightsError(
        f"{model!r} has no weights tagged {tag!r}{also}; {listed} (segzoo.list_weights() lists all). "
        "A file path must exist and end in .safetensors, .pth or .pt"
    )
