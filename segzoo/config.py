"""YAML training configs: ``_base_`` inheritance, ``key.sub=value`` overrides and validation.

A config has four sections: ``model`` (``name`` plus the builder's keyword arguments),
``data``, ``train`` and ``eval``; :data:`DEFAULTS` lists every key of the last three with its
default. The one inheritance rule: ``_base_`` names YAML files (a path relative to the file,
or a list of them) that are loaded first, in order; the file's own values are then merged in:
mappings merge key by key, any other value (lists included) replaces the base's value.
Unknown keys raise an error that names the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

PathLike = str | os.PathLike

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": None},
    "data": {
        "type": "shapes",         # shapes | coco | coco_semantic | mask_folder
        "root": "data/shapes",    # shapes: where the generated files live
        "train": {},              # dataset arguments of the train split (see segzoo.data.build_dataset)
        "val": {},                # dataset arguments of the validation split
        "classes": None,          # class names (mask_folder)
        "binary": False,          # mask_folder: 0/255 masks, 255 -> label 1
        "mapping": None,          # mask_folder: {raw value: label}
        "ignore_index": 255,
        "allow_empty": False,     # keep images without labels (reported as warnings)
        "check": True,            # run the data checks before training
        "batch_size": 8,          # per process (global batch = batch_size * world size * grad_accum)
        "val_batch_size": None,   # defaults to batch_size
        "num_workers": 2,
        "augment": {"size": 512, "scale": [0.5, 2.0], "hflip": 0.5, "color_jitter": 0.2},
    },
    "train": {
        "epochs": 10,
        "max_steps": None,        # stop after this many optimizer steps (overrides epochs)
        "optimizer": "sgd",       # sgd | adamw
        "lr": 0.01,
        "momentum": 0.9,
        "betas": [0.9, 0.999],
        "weight_decay": 1.0e-4,
        "backbone_lr_mult": 1.0,  # learning-rate multiplier of the model.backbone parameters
        "freeze_backbone": False,
        "schedule": "poly",       # poly | cosine | constant
        "poly_power": 0.9,
        "min_lr_ratio": 0.0,
        "warmup_steps": 0,
        "warmup_factor": 0.001,
        "grad_accum": 1,
        "clip_grad": None,        # max gradient norm
        "amp": "auto",            # auto | bf16 | fp16 | off  (auto: bf16/fp16 on CUDA, off on CPU)
        "channels_last": False,
        "compile": False,
        "device": "auto",         # auto | cpu | cuda | cuda:1 | mps
        "seed": 0,
        "checkpoint_every": 0,    # optimizer steps between checkpoints (0: end of each epoch only)
        "log_every": 10,
        "early_stop_patience": 0, # evaluations without improvement before stopping (0: never)
        "progress": True,         # tqdm progress bar
        "tensorboard": True,      # also log to TensorBoard when it is installed
    },
    "eval": {
        "every": 1,               # epochs between evaluations (0: only at the end)
        "metric": "auto",         # auto: miou (semantic), segm_ap (instance), bbox_ap (detection)
        "max_images": None,
        "num_pictures": 4,        # validation images drawn in predictions.png
        "score_threshold": 0.5,   # detections drawn in predictions.png
    },
}

FREE_SECTIONS = {"model", ("data", "train"), ("data", "val"), ("data", "mapping")}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 and Python do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and how to fix it."""


def merge(base: dict, update: dict) -> dict:
    """``update`` merged into a copy of ``base``: mappings merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with model/data/train/eval sections")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        merged = merge(merged, _read_yaml(path.parent / b, (*seen, path)))
    return merge(merged, data)


def _closest(key: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid keys: {', '.join(prefix + o for o in sorted(options))}"


def validate(cfg: dict, defaults: dict | None = None, prefix: str = "") -> None:
    """Raise a :class:`ConfigError` for keys that are not in :data:`DEFAULTS`."""
    defaults = DEFAULTS if defaults is None else defaults
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown config key {path!r}{_closest(key, list(defaults), prefix)}")
        parts = tuple(path.split("."))
        free = parts[0] == "model" or parts[:2] in FREE_SECTIONS
        if isinstance(defaults[key], dict) and not isinstance(value, dict) and not (free and value is None):
            raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
        if isinstance(defaults[key], dict) and not free:
            validate(value, defaults[key], f"{path}.")
        elif not free:
            _check_type(path, value, defaults[key])


# keys that take more than their default's type, and the types of keys whose default is None
_TYPES: dict[str, tuple[type, ...]] = {
    "data.augment.size": (int, list, tuple), "train.amp": (str, bool), "train.max_steps": (int,),
    "train.clip_grad": (float, int), "data.val_batch_size": (int,), "eval.max_images": (int,),
    "data.classes": (list, tuple),
}


def _check_type(path: str, value: Any, default: Any) -> None:
    """Raise a :class:`ConfigError` when ``value`` is not of the key's type (None always passes)."""
    if value is None:
        return
    expected = _TYPES.get(path)
    if expected is None:
        if default is None:
            return
        expected = _LIKE.get(type(default), (type(default),))
    ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
    if not ok:
        shown = [t for t in expected if not (t is int and float in expected)]  # "a number" covers ints
        names = " or ".join(dict.fromkeys(_NAMES.get(t, t.__name__) for t in shown))
        example = f" (default {path}={default!r})" if default is not None else ""
        raise ConfigError(f"config key {path!r} must be {names}, got {value!r} ({type(value).__name__}){example}")


_LIKE = {bool: (bool,), int: (int,), float: (float, int), list: (list, tuple)}
_NAMES = {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list", tuple: "a list"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> ``(["train", "epochs"], 2)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {text!r} must name a section and a key, e.g. train.lr=0.01")
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def load_config(path: PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> dict:
    """Load a config file, apply ``key.sub=value`` overrides, fill defaults and validate.

    Args:
        path: a YAML file (may use ``_base_``); None starts from ``base`` or the defaults.
        overrides: strings like ``"train.epochs=2"`` or ``"model.backbone=resnet18"``.
        base: a config mapping to start from instead of a file.

    Returns:
        The resolved config: a plain nested dict with every section and key.
    """
    user = _read_yaml(Path(path)) if path is not None else copy.deepcopy(base or {})
    validate(user)
    for text in overrides:
        keys, value = parse_override(text)
        node = user
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
        validate(user)
    cfg = merge(DEFAULTS, user)
    if not cfg["model"].get("name"):
        raise ConfigError("the config has no model.name; set it to a registered model (segzoo.list_models())")
    if path is not None:
        cfg.setdefault("_name_", Path(path).stem)
    return cfg


def dump(cfg: dict) -> str:
    """The config as YAML text (sections in their usual order)."""
    ordered = {k: cfg[k] for k in ("model", "data", "train", "eval") if k in cfg}
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None)
