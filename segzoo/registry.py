"""The model registry: one factory (`build`) for every architecture in segzoo.

An entrypoint is a small function that holds a variant's numbers and returns a segzoo
model; its return annotation names the model class. Registering it with
:func:`register_model` makes it reachable by name through :func:`build` and wraps it so
that, however it is called, the returned model carries a :class:`ModelSpec`
(``model.spec``) from which ``segzoo.load`` can rebuild it. A model's task is its class
attribute ``task``: the registry reads it from the declared class (so :func:`list_models`
filters by task without building anything) and the spec copies it from the built model.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import inspect
import json
import threading
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import (
    CheckpointError,
    PathLike,
    check_header_model,
    corrupt_header,
    load_state,
    load_weights,
    read_checkpoint,
)
from segzoo.hub.cache import looks_like_path
from segzoo.hub.published import load_families
from segzoo.hub.weights import pretrained_state
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD, TASKS, ModelSpec

# Arguments that `build` handles itself; they never reach the spec's kwargs.
_FILE_ARGS = ("weights", "backbone_weights")


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    fn: Callable[..., nn.Module]
    cls: type
    module: str

    @property
    def task(self) -> str:
        """The declared model class's task."""
        return self.cls.task  # type: ignore[attr-defined]  # checked by _declared_class at registration


_REGISTRY: dict[str, _Entry] = {}


def _declared_class(fn: Callable[..., nn.Module]) -> type:
    """The model class an entrypoint declares as its return annotation, checked."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # an annotation that does not resolve
        raise TypeError(f"entrypoint {fn.__name__!r}: its return annotation does not resolve ({e})") from e
    cls = hints.get("return")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(
            f"entrypoint {fn.__name__!r} must declare the model class it returns, e.g. "
            f"`def {fn.__name__}(**kwargs) -> FCN:`; the registry reads the task from that class"
        )
    task = getattr(cls, "task", None)
    if task not in TASKS:
        raise ValueError(f"{cls.__name__}.task must be one of {TASKS}, got {task!r} (entrypoint {fn.__name__!r})")
    return cls


def register_model(fn: Callable[..., nn.Module] | None = None):
    """Register an entrypoint under its function name (use as ``@register_model``).

    The entrypoint's return annotation must be its model class, whose ``task`` attribute is
    the model's task.

    Raises:
        TypeError: no model class declared, or ``register_model(task=...)`` (the task comes
            from the class).
        ValueError: the class's task is unknown, or the name is already registered.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            other = _REGISTRY[name].module
            raise ValueError(
                f"model {name!r} is registered twice ({other} and {fn.__module__}); "
                "rename one of the entrypoints"
            )
        cls = _declared_class(fn)

        @functools.wraps(fn)
        def entrypoint(**kwargs: Any) -> nn.Module:
            return _build_entry(_REGISTRY[name], kwargs)

        _REGISTRY[name] = _Entry(name=name, fn=fn, cls=cls, module=fn.__module__)
        return entrypoint

    if fn is None:
        return decorator
    if not callable(fn):
        raise TypeError("use @register_model without arguments: the task comes from the model class")
    return decorator(fn)


def _json_safe(value: Any, key: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except TypeError as e:
        raise TypeError(
            f"argument {key}={value!r} is not JSON-serialisable and cannot be stored in the "
            "model spec; pass plain numbers, strings, lists or dicts"
        ) from e


def _build_entry(entry: _Entry, kwargs: dict[str, Any]) -> nn.Module:
    weights = kwargs.pop("weights", None)
    classes = None
    if isinstance(weights, str) and not looks_like_path(weights):
        # a published tag: fetched, converted and cached once; the converted checkpoint's
        # arguments are the defaults (the caller's win, e.g. num_classes to fine-tune). The hub sits
        # below the registry; it converts with what the model's family registered beside its key maps.
        weights, defaults, classes = pretrained_state(entry.name, weights)
        kwargs = {**defaults, **kwargs}
    # num_classes is recorded from the built model (an int even when given as a numpy integer)
    spec_kwargs = {k: _json_safe(v, k) for k, v in kwargs.items() if k not in (*_FILE_ARGS, "num_classes")}
    built = entry.fn(**kwargs)
    if not isinstance(built, entry.cls) or getattr(built, "task", None) != entry.task:
        raise TypeError(
            f"entrypoint {entry.name!r} declares {entry.cls.__name__} (task {entry.task!r}) but "
            f"built {type(built).__name__} (task {getattr(built, 'task', None)!r}); fix its return annotation"
        )
    model: Any = built  # Any: spec, classes and task are plain attributes that nn.Module's stubs do not know
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise TypeError(f"entrypoint {entry.name!r} returned a model without an int num_classes")
    mean = tuple(getattr(model, "input_mean", IMAGENET_MEAN))
    std = tuple(getattr(model, "input_std", IMAGENET_STD))
    model.spec = ModelSpec(
        name=entry.name, task=model.task, num_classes=num_classes,
        kwargs=spec_kwargs, mean=mean, std=std,
    )
    if weights is not None:
        load_weights(model, weights)
    if classes is not None and len(classes) == num_classes:
        model.classes = list(classes)
    return model


def _closest(name: str, n: int = 5) -> list[str]:
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not close:
        prefix = name.split("_")[0]
        close = [m for m in names if m.startswith(prefix)][:n]
    return close


def get_entry(name: str) -> _Entry:
    """The registered entry of ``name`` (its declared class and task), or a KeyError naming the
    closest names."""
    load_families()
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
            ``backbone_weights`` (a local timm weights file, ``"imagenet"`` for timm's
            default pretrained weights of the backbone, or a timm tag such as
            ``"resnet50.a1_in1k"``), ``weights`` (a segzoo checkpoint, or a published tag
            from :func:`segzoo.list_weights` such as ``"tv_coco_voc"``: fetched, converted
            and cached once; loaded after building, and when ``num_classes`` differs the
            class-dependent layers are re-initialised with a warning) and the
            architecture's own keyword arguments. An unknown keyword raises a TypeError that lists the
            accepted ones.

    Returns:
        The model, with ``model.spec`` set.
    """
    entry = get_entry(name)
    return _build_entry(entry, dict(kwargs))


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Sorted names of registered models matching a shell-style pattern and a task."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    load_families()
    return sorted(
        n for n, e in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task)
    )


def entry_class(name: str) -> type:
    """The model class the entrypoint ``name`` declares (what converters dispatch on)."""
    return get_entry(name).cls


class _Stop(BaseException):
    """Ends an entrypoint at the moment it constructs its model class (see :func:`builder_defaults`)."""


_SPY_LOCK = threading.Lock()
_PLAIN = (str, int, float, bool, type(None))


def _plain_value(v: Any) -> bool:
    """A value a YAML config can hold on one line: a scalar, or a flat list of scalars."""
    return isinstance(v, _PLAIN) or (isinstance(v, (list, tuple)) and all(isinstance(x, _PLAIN) for x in v))


def builder_defaults(name: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The arguments that ``build(name, **kwargs)`` gives the model's class without the caller setting them: the
    variant's values and the class's keyword defaults, as plain config values (scalars and flat lists; callables,
    modules and nested mappings are left out), keyed like ``kwargs``.

    The entrypoint runs up to the moment it constructs its declared class, whose arguments are read there and the
    construction stopped, so nothing is built and no weights are read. Passing the result back explicitly,
    ``build(name, **kwargs, **builder_defaults(name, kwargs))``, builds the same model. A published ``weights`` tag
    brings its checkpoint's arguments as defaults, which are not read here: those configs get ``{}``.
    """
    entry = get_entry(name)
    kwargs = dict(kwargs or {})
    weights = kwargs.get("weights")
    if isinstance(weights, str) and not looks_like_path(weights):
        return {}
    cls = entry.cls
    own = "__init__" in cls.__dict__
    original = cls.__init__  # type: ignore[misc]  # a class-level spy, restored below
    signature = inspect.signature(original)
    seen: list[inspect.BoundArguments] = []

    @functools.wraps(original)  # the same signature: check_kwargs reads it
    def spy(self, *args: Any, **kw: Any) -> None:
        if type(self) is cls and not seen:
            seen.append(signature.bind(self, *args, **kw))
            raise _Stop
        original(self, *args, **kw)

    with _SPY_LOCK:
        cls.__init__ = spy  # type: ignore[misc]  # a class-level spy, restored below
        try:
            entry.fn(**{k: v for k, v in kwargs.items() if k != "weights"})
        except _Stop:
            pass
        finally:
            if own:
                cls.__init__ = original  # type: ignore[misc]  # a class-level spy, restored below
            else:
                del cls.__init__  # type: ignore[misc]  # a class-level spy, restored below
    if not seen:
        return {}
    bound = seen[0]
    bound.apply_defaults()
    out = {}
    for key, value in list(bound.arguments.items())[1:]:  # past self
        param = signature.parameters[key]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or key in kwargs or key in (*_FILE_ARGS, "weights"):
            continue
        if _plain_value(value):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


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
        params = inspect.signature(vars(klass)["__init__"]).parameters
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


def load(path: PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Rebuild a model from a segzoo checkpoint alone.

    The file is validated first (see the module docstring): a damaged or edited file raises a
    :class:`CheckpointError` before any model is built.

    Args:
        path: a ``.safetensors`` file written by :func:`save`.
        map_location: device to put the model on.
        **overrides: builder arguments to change (for example ``num_classes`` to fine-tune
            on other classes: the class-dependent layers are then re-initialised).

    Returns:
        The model in eval mode, with ``model.spec`` and ``model.classes`` set.
    """
    state, spec, classes = read_checkpoint(path)
    try:
        task = get_entry(spec.name).task
    except KeyError as e:
        raise CheckpointError(f"{path} holds a model this segzoo does not have: {e.args[0]}") from None
    if task != spec.task:
        raise corrupt_header(path, f"task={spec.task!r} but {spec.name} is a {task} model")
    check_header_model(path, spec, state, build)
    model: Any = build(spec.name, **{**spec.kwargs, "num_classes": spec.num_classes, **overrides})
    changed = model.num_classes != spec.num_classes
    if spec.threshold is not None and not changed:  # a binary model's threshold, picked by its training
        model.spec = dataclasses.replace(model.spec, threshold=spec.threshold)
    load_state(model, state, path, strict=True, reinit_class_layers=changed)
    model.classes = None if changed else classes
    return model.to(map_location).eval()
