"""The pieces every config section is made of: :func:`option` (a field's default, help and range),
:class:`ConfigError`, and the checks derived from a field's annotation and bounds (types, null, finite
numbers, ranges, choices, patterns) that :mod:`segzoo.config.parse` applies key by key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Union


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and how to fix it."""


def option(default: Any, help: str = "", *, choices: tuple | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           pattern: str | None = None) -> Any:
    """A config field: its default, a short help text and its allowed values.

    The type comes from the field's annotation. Bounds (``ge``/``gt``/``le``/``lt``) apply to
    numbers and to each number of a list; ``choices`` and ``pattern`` to strings.
    """
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=type(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Section:
    """Shared behaviour of the typed sections: plain-dict conversion (lists for tuples)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v



_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 6, 6, 3
_NAMES = {int: "an integer", float: "a number", bool: "true/false", str: "a string", tuple: "a list",
          dict: "a mapping"}
_PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


class _Mismatch(Exception):
    pass


def _scalar(value: Any, tp: type) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise _Mismatch
    return value


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "a list"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(path: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (lists become tuples); raises _Mismatch when it is not of the type."""
    if typing.get_origin(tp) is not tuple:
        return _scalar(value, tp)
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    args = typing.get_args(tp)
    elems = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    try:
        if len(elems) != len(value):
            raise _Mismatch
        return tuple(_scalar(v, t) for v, t in zip(value, elems))
    except _Mismatch:
        what = (f"a list of {_PLURAL.get(args[0], 'values')}" if args[-1] is Ellipsis
                else f"a list of {len(args)} {_PLURAL.get(args[0], 'values')}")
        raise ConfigError(f"config key {path!r} must be {what}, got {_short.repr(value)}") from None


def _check_range(path: str, value: Any, meta: Mapping) -> None:
    items = value if isinstance(value, tuple) else (value,)
    hint = f" ({meta['help']})" if meta.get("help") else ""
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"config key {path!r} must be a finite number, got {v}{hint}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for key, ok, sign in (("ge", operator.ge, ">="), ("gt", operator.gt, ">"), ("le", operator.le, "<="),
                                  ("lt", operator.lt, "<")):
                bound = meta.get(key)
                if bound is not None and not ok(v, bound):
                    raise ConfigError(f"config key {path!r} must be {sign} {bound}, got {_short.repr(_plain(value))}"
                                      f"{hint}")
        if isinstance(v, str):
            if meta.get("choices") and v not in meta["choices"]:
                raise ConfigError(f"config key {path!r} must be one of {', '.join(meta['choices'])}, got {v!r}"
                                  f"{_closest(v, list(meta['choices']), path.rsplit('.', 1)[0] + '.', values=True)}")
            if meta.get("pattern") and not re.fullmatch(meta["pattern"], v):
                raise ConfigError(f"config key {path!r} must be {meta['help'] or meta['pattern']}, got {v!r}")


def _value(path: str, value: Any, tp: Any, meta: Mapping, default: Any) -> Any:
    """A field's value checked against its annotation and bounds."""
    origin = typing.get_origin(tp)
    alternatives = list(typing.get_args(tp)) if origin in (Union, types.UnionType) else [tp]
    nullable = type(None) in alternatives
    alternatives = [t for t in alternatives if t is not type(None)]
    if value is None:
        if nullable:
            return None
        shown = f" (default {path}={_short.repr(_plain(default))})" if default is not None else ""
        raise ConfigError(f"config key {path!r} cannot be null; set {_describe(alternatives[0])}{shown}")
    for alt in alternatives:
        try:
            out = _convert(path, value, alt)
        except _Mismatch:
            continue
        _check_range(path, out, meta)
        return out
    names = " or ".join(dict.fromkeys(_describe(t) for t in alternatives))
    shown = f" (default {path}={_short.repr(_plain(default))})" if default is not None else ""
    raise ConfigError(f"config key {path!r} must be {names}, got {_short.repr(value)} ({type(value).__name__})"
                      f"{shown}")


def _closest(key: str, options: list[str], prefix: str = "", values: bool = False) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {prefix + close[0] if not values else close[0]!r}?"
    return "" if values else f"; valid keys: {', '.join(prefix + o for o in sorted(options))}"
