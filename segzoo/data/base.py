"""What every dataset reader shares above its files: building itself from the typed config
(:class:`ConfigReader`, :class:`SplitArgs`) and saying which target kinds it gives."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch.utils.data import Dataset

from segzoo.config import ConfigError
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, Target

OBJECT_TARGETS = (CLASS_MAP, INSTANCE_MASKS, BOXES)  # what object records (or a label map) can give


def check_target(target: Target, allowed: tuple[Target, ...] = OBJECT_TARGETS, what: str = "this reader") -> Target:
    """``target`` when ``what`` can give it, else a ValueError naming the kinds it gives."""
    if not isinstance(target, Target):
        raise TypeError(f"target must be a segzoo.data.targets.Target (CLASS_MAP, BOXES, INSTANCE_MASKS, SEGMENTS), "
                        f"got {target!r}")
    if target not in allowed:
        raise ValueError(f"{what} gives {'/'.join(t.name for t in allowed)} data, not {target.name}")
    return target


class SplitArgs:
    """``data.<split>`` as one reader takes it (:meth:`ConfigReader.from_config`): names checked, paths kept.

    Args:
        given: the split's arguments (config names: ``root``, ``images``, ``annotations``, ...).
        split: the split, for messages (``data.train...``).
        kind: the ``data.type``, for messages.
    """

    def __init__(self, given: dict[str, Any], split: str, kind: str) -> None:
        self.given, self.split, self.kind = dict(given), split, kind
        self.paths: dict[str, str] = {}  # config key -> path, of the keys the reader reads as paths
        self.took_classes = False  # the reader took data.classes (else they must equal the files' names)

    def take(self, accepted: tuple[str, ...], required: tuple[str, ...] = (), paths: tuple[str, ...] = ()) -> dict:
        """The arguments, refused when one is not ``accepted`` or a ``required`` one is missing."""
        unknown = [k for k in self.given if k not in accepted]
        if unknown:
            raise ValueError(f"data.{self.split} has unknown arguments {unknown} for data.type {self.kind}; accepted: "
                             f"{', '.join(accepted) or 'none'}")
        missing = [k for k in required if k not in self.given]
        if missing:
            raise ConfigError(f"data.{self.split} needs {', '.join(f'data.{self.split}.{m}' for m in missing)} for "
                              f"data.type={self.kind} (paths to the dataset's files)")
        self.paths = {k: str(self.given[k]) for k in paths if self.given.get(k) is not None}
        return dict(self.given)

    def missing_path(self) -> str | None:
        """The config key to blame for a FileNotFoundError: the first path that does not exist, else the one
        path given (a folder without the layout's files), else None (not a path of the config)."""
        gone = [k for k, v in self.paths.items() if not Path(v).exists()]
        if gone:
            return gone[0]
        return next(iter(self.paths)) if len(self.paths) == 1 else None


def refuse_target(kind: str, gives: tuple[Target, ...], target: Target) -> None:
    """A ValueError when ``data.type`` ``kind``, which gives ``gives``, cannot give the model's ``target``."""
    if target not in gives:
        raise ValueError(f"data.type {kind} gives {'/'.join(t.name for t in gives)} data but the model's task is "
                         f"{target.name}; use a model of that task or another dataset")


class ConfigReader:
    """What every dataset reader offers :func:`segzoo.data.build_dataset`: building itself from the config.

    A reader declares the ``data.<split>`` keys it takes (:attr:`config_keys`, constructor arguments
    of the same names), those it needs and those that are paths; :meth:`from_config` builds it from
    them, and readers whose arguments differ from their config keys override it.
    """

    targets: tuple[Target, ...] = OBJECT_TARGETS  # the target kinds it gives
    config_keys: tuple[str, ...] = ("root",)  # the data.<split> keys it takes
    config_required: tuple[str, ...] = ("root",)  # ... of which these must be given
    config_paths: tuple[str, ...] = ("root",)  # ... and these are paths (a FileNotFoundError names them)
    # constructor arguments whose data.<split> key has another name ({"ann_file": "annotations"})
    config_renames: Mapping[str, str] = MappingProxyType({})

    @classmethod
    def config_names(cls, found: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments (what ``data.type: auto`` finds) under their ``data.<split>`` names."""
        return {cls.config_renames.get(k, k): v for k, v in found.items()}

    @classmethod
    def take(cls, args: SplitArgs) -> dict[str, Any]:
        """``data.<split>`` checked against the declared keys."""
        return args.take(cls.config_keys, cls.config_required, cls.config_paths)

    @classmethod
    def from_config(cls, cfg: Any, args: SplitArgs, target: Target, transforms) -> Dataset:
        """The reader of one split (``cfg`` the typed ``data`` section, ``args`` its ``data.<split>``):
        ``cls(**data.<split>, transforms=...)``; ``split``, ``classes`` and ``ignore_index``, where the
        reader takes them, default to the split and to ``data.classes`` / ``data.ignore_index``;
        ``target`` is passed to readers that give more than one kind."""
        accepted = cls.config_keys
        kw = cls.take(args)
        refuse_target(args.kind, cls.targets, target)
        if "split" in accepted:
            kw.setdefault("split", args.split)
        if "classes" in accepted and cfg.classes is not None:
            kw.setdefault("classes", list(cfg.classes))
        args.took_classes = "classes" in accepted
        if "ignore_index" in accepted:
            kw.setdefault("ignore_index", cfg.ignore_index)
        if len(cls.targets) > 1:
            kw["target"] = target
        return cls(**kw, transforms=transforms)
