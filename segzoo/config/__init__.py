"""Training configs: typed sections read from YAML, with ``_base_`` inheritance and ``key.sub=value`` overrides.

A config has four sections: ``model`` (``name`` plus the builder's keyword arguments, a free
mapping), ``data`` (:class:`DataConfig`, with ``augment``: :class:`AugmentConfig`), ``train``
(:class:`TrainConfig`) and ``eval`` (:class:`EvalConfig`). Every key of the last three is a field
of its frozen dataclass, declared once with :func:`option`: the default, the type (the field's
annotation) and the allowed range. The loader derives every check from those declarations:
unknown keys name the closest valid key, wrong types name the expected one, ``null`` is refused
where the annotation does not allow None, numbers must be finite and in range, strings one of
their choices. Adding a key is one line in its dataclass.

The one inheritance rule: ``_base_`` names YAML files (a path relative to the file, or a list
of them) that are loaded first, in order; the file's own values are then merged in: mappings
merge key by key, any other value (lists included) replaces the base's value. Files are bounded
(size, nesting depth, and the number of values once aliases are expanded), so a hostile file
is refused at once instead of exhausting memory.
"""

from segzoo.config.fields import ConfigError, option
from segzoo.config.files import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_VALUES,
    PathLike,
    apply_overrides,
    dump,
    load_config,
    merge,
    parse_override,
)
from segzoo.config.parse import check_sections, parse_config, parse_section
from segzoo.config.sections import (
    REMOVED,
    SECTIONS,
    AugmentConfig,
    DataConfig,
    EvalConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_VALUES", "REMOVED", "SECTIONS", "AugmentConfig", "ConfigError",
    "DataConfig", "EvalConfig", "PathLike", "RunConfig", "TrainConfig", "apply_overrides", "check_sections", "dump",
    "load_config", "merge", "option", "parse_config", "parse_override", "parse_section",
]
