"""Published weights by tag: the table, fetching, converting, caching and manual imports.

Every model family registers the published checkpoints that fit it (:func:`register_weights`)
with a tag, its source, dataset, class names, input statistics, reported metric and licence.
``segzoo.build(name, weights=TAG)`` then resolves the tag, fetches the source (torchvision's
``Weights`` enums through torch.hub) or picks up a file downloaded by hand, converts it with
segzoo's converter and caches the converted checkpoint (class names in its header) under
``SEGZOO_HOME``; later calls load the cached file and touch no network. See
:mod:`segzoo.hub` for the cache, offline mode and the lock.

Names are ``model.tag`` (as timm's ``resnet50.a1_in1k``): ``deeplabv3_resnet50.tv_coco_voc``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torchvision.models import get_weight
from tqdm import tqdm

from segzoo import hub
from segzoo.checkpoint import read_state_dict
from segzoo.convert import SOURCES, converter
from segzoo.hub import WeightsError
from segzoo.registry import IMAGENET_MEAN, IMAGENET_STD

SOURCE_KINDS = ("torchvision", "manual")
TORCHVISION_LICENCE = ("BSD-3-Clause (torchvision); trained on COCO, whose annotations are CC BY 4.0 "
                       "and images carry their own terms")
TORCHVISION_PAGE = "https://pytorch.org/vision/stable/models.html"


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint that fits a segzoo model.

    Attributes:
        model: the segzoo model it converts into, e.g. ``"deeplabv3_resnet50"``.
        tag: short name, unique per model; ``model.tag`` names the weights.
        source: ``"torchvision"`` (downloaded through torchvision's ``Weights`` enum) or
            ``"manual"`` (a host segzoo cannot download from: the user fetches the file).
        converter: the :mod:`segzoo.convert` source that turns the file into segzoo's layout.
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

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"source must be one of {SOURCE_KINDS}, got {self.source!r}")
        if self.converter not in SOURCES:
            raise ValueError(f"converter must be one of {tuple(SOURCES)}, got {self.converter!r}")
        if (self.source == "torchvision") != (self.torchvision is not None):
            raise ValueError("torchvision entries name their Weights enum member, and only they do")
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
        """The download URL: torchvision's, read from its enum; None for manual sources."""
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


# ---------------------------------------------------------------------------- the table

_TABLE: dict[str, WeightsEntry] = {}


def register_weights(*entries: WeightsEntry) -> None:
    """Add entries to the table; a name registered twice raises."""
    for e in entries:
        if e.name in _TABLE:
            raise ValueError(f"weights {e.name!r} are registered twice; give one of them another tag")
        _TABLE[e.name] = e


def _table() -> dict[str, WeightsEntry]:
    importlib.import_module("segzoo.models")  # the families register their tables on import
    return _TABLE


def list_weights(pattern: str = "*") -> list[str]:
    """Sorted ``model.tag`` names of the published weights matching a shell-style pattern.

    ``segzoo.list_weights("deeplabv3*")``; :func:`get_weights` gives an entry's details.
    """
    return sorted(n for n in _table() if fnmatch.fnmatch(n, pattern))


def get_weights(name: str) -> WeightsEntry:
    """The table entry of ``model.tag``."""
    table = _table()
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
    table = _table()
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


def looks_like_path(value: str | os.PathLike) -> bool:
    """True for a file path, False for a tag: paths are PathLike, exist, or have a separator
    or a weights suffix."""
    if not isinstance(value, str):
        return True
    return (os.sep in value or "/" in value or Path(value).suffix in (".safetensors", ".pth", ".pt", ".bin")
            or Path(value).exists())


# ---------------------------------------------------------------------------- fetch, convert, cache


def _by_hand(entry: WeightsEntry) -> str:
    where = hub.torch_hub_path(entry.url) if entry.source == "torchvision" else hub.downloads_dir() / entry.file_name
    get = entry.url if entry.source == "torchvision" else f"{entry.file_name} from {entry.link or entry.page}"
    page = f" (page: {entry.page})" if entry.source == "manual" and entry.link else ""
    return (f"Download {get}{page}, then put it at {where} or run `segzoo weights import {entry.name} FILE`")


def pretrained_checkpoint(entry: WeightsEntry) -> Path:
    """The cached segzoo checkpoint of ``entry``, fetched and converted first if needed.

    Manual sources are picked up from ``SEGZOO_HOME/downloads/<file name>``; torchvision's are
    downloaded (unless offline). One process at a time fetches a given entry.
    """
    with hub.locked(entry.name):
        path = hub.cached_checkpoint(entry.name)
        if path is not None:
            return path
        if entry.source == "torchvision":
            state = hub.torchvision_state_dict(entry.weights_enum(), entry.name, _by_hand(entry))
            return _convert_and_store(entry, state, {"url": entry.url})
        local = hub.downloads_dir() / entry.file_name
        if not local.exists():
            raise WeightsError(
                f"{entry.name} is published where segzoo cannot download from (no direct, verifiable "
                f"link), so it must be fetched by hand. {_by_hand(entry)}"
            )
        return _convert_and_store(entry, _read_verified(entry, local), {"file": str(local)})


def _read_verified(entry: WeightsEntry, path: Path) -> dict[str, torch.Tensor]:
    """Check a file against the table (size, sha256 where known) and read it (weights_only)."""
    if not path.is_file():
        raise WeightsError(f"{path} is not a file")
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsError(f"{path} has {size} bytes but {entry.name} ({entry.file_name}) has {entry.size}: "
                           f"a different or incomplete file; download it again from {entry.link or entry.page}")
    expected = entry.sha256 or (hub.hash_prefix(entry.url) if entry.source == "torchvision" else None)
    if expected is not None:
        digest = hub.sha256_file(path, desc=f"checking {path.name}")
        if not digest.startswith(expected):
            raise WeightsError(f"{path} has sha256 {digest} but {entry.name} ({entry.file_name}) has "
                               f"{expected}: a different or corrupted file; download it again")
    return read_state_dict(path)


def _convert_and_store(entry: WeightsEntry, state: dict, source: dict) -> Path:
    with tqdm(total=2, desc=f"converting {entry.name}", unit="step") as bar:
        try:
            model = converter(entry.converter)(state, entry.model, **dict(entry.convert_kwargs))
        except (KeyError, ValueError) as e:
            raise WeightsError(f"the file for {entry.name} does not convert into {entry.model}: {e}") from None
        bar.update()
        spec = model.spec
        if spec.num_classes != len(entry.classes):
            raise WeightsError(f"the file for {entry.name} holds {spec.num_classes} classes but the published "
                               f"{entry.dataset} weights have {len(entry.classes)}: a different checkpoint")
        assert torch.allclose(torch.tensor(spec.mean), torch.tensor(entry.mean)) and torch.allclose(
            torch.tensor(spec.std), torch.tensor(entry.std)), f"{entry.name}: table and converter disagree on mean/std"
        path = hub.store_checkpoint(entry.name, model, list(entry.classes), source)
        bar.update()
    return path


def import_file(name: str, file: str | os.PathLike) -> Path:
    """Check a downloaded file against the table, convert it and put it in the cache.

    Returns:
        The cached checkpoint: ``segzoo.build(model, weights=tag)`` now uses it.
    """
    entry = get_weights(name)
    with hub.locked(entry.name):
        return _convert_and_store(entry, _read_verified(entry, Path(file)), {"file": str(Path(file).resolve())})
