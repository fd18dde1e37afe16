"""The model registry: one factory (`build`) for every architecture in segzoo.

An entrypoint is a small function that holds a variant's numbers and returns an
``nn.Module``. Registering it with :func:`register_model` makes it reachable by name
through :func:`build`, records its task and wraps it so that, however it is called,
the returned model carries a :class:`ModelSpec` (``model.spec``) from which
``segzoo.load`` can rebuild it.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import nn

TASKS = ("semantic", "instance", "detection")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Arguments that `build` handles itself; they never reach the spec's kwargs.
_FILE_ARGS = ("weights", "backbone_weights")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: JSON-serialisable and stored in checkpoints.

    Attributes:
        name: registered entrypoint name, e.g. ``"fcn_resnet50"``.
        task: ``"semantic"``, ``"instance"`` or ``"detection"``.
        num_classes: semantic: every label including background; detection and instance:
            object classes only (background is implicit).
        kwargs: the builder keyword arguments given at build time (``backbone`` included),
            except file paths (``weights``, ``backbone_weights``).
        mean: per-channel mean the model subtracts from [0, 1] RGB input.
        std: per-channel std the model divides by.
    """

    name: str
    task: str
    num_classes: int
    kwargs: dict = dataclasses.field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"ModelSpec has unknown fields {sorted(unknown)}")
        data["mean"] = tuple(data.get("mean", IMAGENET_MEAN))
        data["std"] = tuple(data.get("std", IMAGENET_STD))
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    task: str
    fn: Callable[..., nn.Module]
    module: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an entrypoint under its function name.

    Args:
        task: ``"semantic"``, ``"instance"`` or ``"detection"``.

    Raises:
        ValueError: if the task is unknown or the name is already registered.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            other = _REGISTRY[name].module
            raise ValueError(
                f"model {name!r} is registered twice ({other} and {fn.__module__}); "
                "rename one of the entrypoints"
            )

        @functools.wraps(fn)
        def entrypoint(**kwargs: Any) -> nn.Module:
            return _build_entry(_REGISTRY[name], kwargs)

        _REGISTRY[name] = _Entry(name=name, task=task, fn=fn, module=fn.__module__)
        return entrypoint

    return decorator


def _json_safe(value: Any, key: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except TypeError as e:
        raise TypeError(
            f"argument {key}={value!r} is not JSON-serialisable and cannot be stored in the "
            "model spec; pass plain numbers, strings, lists or dicts"
        ) from e


def _build_entry(entry: _Entry, kwargs: dict[str, Any]) -> nn.Module:
    from segzoo.checkpoint import load_weights  # late import: checkpoint imports registry

    weights = kwargs.pop("weights", None)
    spec_kwargs = {k: _json_safe(v, k) for k, v in kwargs.items() if k not in _FILE_ARGS}
    spec_kwargs.pop("num_classes", None)
    model = entry.fn(**kwargs)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise TypeError(f"entrypoint {entry.name!r} returned a model without an int num_classes")
    mean = tuple(getattr(model, "input_mean", IMAGENET_MEAN))
    std = tuple(getattr(model, "input_std", IMAGENET_STD))
    model.spec = ModelSpec(
        name=entry.name, task=entry.task, num_classes=num_classes,
        kwargs=spec_kwargs, mean=mean, std=std,
    )
    if weights is not None:
        load_weights(model, weights)
    return model


def _closest(name: str, n: int = 5) -> list[str]:
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not close:
        prefix = name.split("_")[0]
        close = [m for m in names if m.startswith(prefix)][:n]
    return close


def get_entry(name: str) -> _Entry:
    _ensure_models_imported()
    if name not in _REGISTRY:
        close = _closest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (segzoo.list_models() lists them all)")
    return _REGISTRY[name]


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a registered name, e.g. ``"fcn_resnet50"`` (see :func:`list_models`).
        **kwargs: ``num_classes``, ``backbone`` (a timm model name with ``features_only``),
            ``backbone_weights`` (a local timm weights file), ``weights`` (a segzoo
            checkpoint, loaded after building; class-dependent layers are re-initialised
            with a warning when ``num_classes`` differs) and the architecture's own
            keyword arguments. An unknown keyword raises a TypeError that lists the
            accepted ones.

    Returns:
        The model, with ``model.spec`` set.
    """
    entry = get_entry(name)
    return _build_entry(entry, dict(kwargs))


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Sorted names of registered models matching a shell-style pattern and a task."""
    _ensure_models_imported()
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return sorted(
        n for n, e in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task)
    )


def model_task(name: str) -> str:
    return get_entry(name).task


def _ensure_models_imported() -> None:
    import segzoo.models  # noqa: F401  (registers every entrypoint)


def check_kwargs(cls: type, name: str, kwargs: dict[str, Any]) -> None:
    """Raise a TypeError naming the accepted arguments if ``kwargs`` has unknown keys.

    Family builders call this before constructing ``cls`` so that a typo such as
    ``num_clases=3`` is reported with the list of what ``name`` accepts. A constructor that
    passes ``**kwargs`` on to its base class (``MaskRCNN`` to ``FasterRCNN``) accepts what the
    base accepts.
    """
    accepted: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        accepted += [p.name for p in params.values() if p.name != "self" and p.name not in accepted
                     and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    else:
        return  # **kwargs all the way up: nothing to check against
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"{name}: unknown argument {', '.join(hints)}; accepted arguments: "
            f"{', '.join(accepted + ['weights'])}"
        )


def create(cls: type, name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    """Construct ``cls(**defaults, **kwargs)`` after checking ``kwargs`` (user values win)."""
    check_kwargs(cls, name, kwargs)
    return cls(**{**defaults, **kwargs})
