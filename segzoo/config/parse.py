"""From plain mappings to typed sections: every key checked against its field, empty sections refused."""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from segzoo.config.fields import ConfigError, _closest, _short, _value
from segzoo.config.sections import REMOVED, SECTIONS, RunConfig
from segzoo.losses import parse_loss


def parse_section(cls: type, mapping: Any, prefix: str) -> Any:
    """Build the dataclass ``cls`` from a mapping, checking every key against its field."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.')!r} must be a mapping, got {_short.repr(mapping)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if path in REMOVED:
            raise ConfigError(f"config key {path!r} no longer exists: {REMOVED[path]}")
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}{_closest(str(key), list(fields), prefix)}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = parse_section(hints[key], value, f"{path}.")
        else:
            kwargs[key] = _value(path, value, hints[key], f.metadata, default)
    return cls(**kwargs)


def check_sections(mapping: Any, source: str | None = None) -> None:
    """Refuse a section (``model``, ``data``, ``train``, ``eval``, ``data.augment``) written with nothing in it:
    ``data:`` with no keys (or only commented-out ones), ``train: null`` or ``eval: {}`` is a lost indentation
    or commented-out lines, never "use the defaults". ``source`` names the file."""
    if not isinstance(mapping, Mapping):
        return
    for path in ("model", *SECTIONS, "data.augment"):
        *parents, key = path.split(".")
        node: Any = mapping
        for k in parents:
            node = node.get(k) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and key in node and (node[key] is None or node[key] == {}):
            raise ConfigError(f"{source + ': ' if source else ''}config section {path!r} is empty "
                              f"({'null' if node[key] is None else '{}'}: nothing under it, or every line commented "
                              "out); an empty section does not mean 'use the defaults': write its keys, or delete "
                              f"the line '{key}:' to inherit the base's and the defaults")


def parse_config(mapping: Mapping, name: str | None = None, require_model: bool = True) -> RunConfig:
    """A :class:`RunConfig` from a plain mapping with ``model``/``data``/``train``/``eval`` sections.

    Args:
        mapping: the sections (missing ones and missing keys take the defaults).
        name: the run's name.
        require_model: refuse a config without ``model.name`` (data-only configs pass False).
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"a config must be a mapping with model/data/train/eval sections, got {_short.repr(mapping)}")
    for key in mapping:
        if key not in ("model", *SECTIONS):
            raise ConfigError(f"unknown config key {key!r}{_closest(str(key), ['model', *SECTIONS])}")
    check_sections(mapping)
    model = mapping.get("model") or {}
    if not isinstance(model, Mapping):
        raise ConfigError(f"config key 'model' must be a mapping, got {_short.repr(model)}")
    if require_model and not model.get("name"):
        raise ConfigError("the config has no model.name; set it to a registered model (segzoo.list_models())")
    if "name" in model and model["name"] is not None and not isinstance(model["name"], str):
        raise ConfigError(f"config key 'model.name' must be a string, got {_short.repr(model['name'])}")
    if model.get("loss") is not None:  # names, options and types; ranges once num_classes is known (the build)
        try:
            parse_loss(model["loss"], where="model.loss")
        except ValueError as e:
            raise ConfigError(f"config key {e}") from None
    sections = {k: parse_section(cls, mapping.get(k), f"{k}.") for k, cls in SECTIONS.items()}
    return RunConfig(model=copy.deepcopy(dict(model)), name=name, **sections)
