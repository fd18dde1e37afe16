"""Config files: bounded YAML reading, ``_base_`` inheritance (:func:`merge`), ``key.sub=value`` overrides,
:func:`load_config` and :func:`dump`."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from segzoo.config.fields import ConfigError, _short
from segzoo.config.parse import check_sections, parse_config
from segzoo.config.sections import RunConfig

PathLike = str | os.PathLike

MAX_CONFIG_BYTES = 1 << 20   # a config file larger than 1 MiB is not a config
MAX_VALUES = 100_000         # values in a file once YAML aliases (*name) are expanded
MAX_DEPTH = 32               # nesting of mappings and lists



class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 and Python do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _measure(node: yaml.Node, depth: int, memo: dict, active: set, source: str) -> tuple[int, int]:
    """(values, height) of a composed YAML node with aliases expanded; shared nodes are measured once."""
    key = id(node)
    if key in memo:
        count, height = memo[key]
    elif isinstance(node, yaml.ScalarNode):
        count, height = 1, 0
    else:
        if key in active:
            raise ConfigError(f"{source}: a YAML alias refers to the value that contains it; a config cannot be "
                              "recursive")
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        active.add(key)
        count, height = 1, 0
        for child in children:
            c, h = _measure(child, depth + 1, memo, active, source)
            count, height = count + c, max(height, h + 1)
            if count > MAX_VALUES:
                raise ConfigError(f"{source}: the YAML expands to more than {MAX_VALUES:,} values (aliases such as "
                                  "*name repeat what they refer to); a config is a small mapping: check the file")
        active.discard(key)
        memo[key] = count, height
    if depth + height > MAX_DEPTH:
        raise ConfigError(f"{source}: the YAML nests mappings and lists more than {MAX_DEPTH} levels deep; "
                          "a config is a small mapping: check the file")
    return count, height


def _yaml(text: str, source: str) -> Any:
    """Parse YAML text, refusing documents too large or too deep before building them."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text):,} characters; a config is at most {MAX_CONFIG_BYTES:,}")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, 0, {}, set(), source)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests too deeply to be a config") from None
    finally:
        loader.dispose()


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
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML config file; name a .yaml file (e.g. configs/fcn.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        data = _yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (UTF-8) file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with model/data/train/eval sections")
    if "_base_" in data and not data["_base_"]:
        raise ConfigError(f"{path}: '_base_' is empty; name the base file(s) or delete the line")
    check_sections(data, str(path))
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of them, got {_short.repr(bases)}")
    merged: dict = {}
    for b in bases:
        merged = merge(merged, _read_yaml(path.parent / b, (*seen, path)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> ``(["train", "epochs"], 2)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {text!r} must name a section and a key, e.g. train.lr=0.01")
    try:
        value = _yaml(raw, f"override {key}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(user: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Set each ``key.sub=value`` in ``user`` (in place), creating mappings on the way."""
    for text in overrides:
        keys, value = parse_override(text)
        node = user
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return user


def load_config(path: PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Mapping | None = None, require_model: bool = True) -> RunConfig:
    """Load a config file, apply ``key.sub=value`` overrides and check every value.

    Args:
        path: a YAML file (may use ``_base_``); None starts from ``base`` or the defaults.
        overrides: strings like ``"train.epochs=2"`` or ``"model.backbone=resnet18"``.
        base: a config mapping to start from instead of a file.
        require_model: refuse a config without ``model.name`` (False for data-only configs).

    Returns:
        The typed :class:`RunConfig`; its ``name`` is the file's stem.
    """
    user = _read_yaml(Path(path)) if path is not None else copy.deepcopy(dict(base or {}))
    parse_config(user, require_model=False)  # a key wrong in the file is reported as the file's
    apply_overrides(user, overrides)
    return parse_config(user, name=Path(path).stem if path is not None else None, require_model=require_model)


DEFAULT_MARK = "# default"


def dump(cfg: RunConfig, model_defaults: Mapping[str, Any] | None = None) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config.

    ``model_defaults`` (:func:`segzoo.registry.builder_defaults`: what the builder uses for the ``model`` keys the
    config does not set) are written after the config's own keys, each line marked ``# default``; read back they
    set explicitly what the builder would have used, so the model built is the same.
    """
    data = cfg.to_dict()
    extra = {k: v for k, v in (model_defaults or {}).items() if k not in data["model"]}
    if not extra:
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    data["model"] = {**data["model"], **extra}
    lines = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1 << 20).splitlines()  # a line each
    out, in_model = [], False
    for line in lines:
        if not line.startswith(" "):
            in_model = line == "model:"
        key = line.strip().split(":", 1)[0]
        marked = in_model and line.startswith("  ") and not line.startswith("   ") and key in extra
        out.append(f"{line}  {DEFAULT_MARK}" if marked else line)
    return "\n".join(out) + "\n"
