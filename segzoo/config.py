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

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import operator
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from segzoo.losses import parse_loss

PathLike = str | os.PathLike

MAX_CONFIG_BYTES = 1 << 20   # a config file larger than 1 MiB is not a config
MAX_VALUES = 100_000         # values in a file once YAML aliases (*name) are expanded
MAX_DEPTH = 32               # nesting of mappings and lists


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


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_Section):
    """Training augmentation (``data.augment``): the arguments of ``segzoo.data.build_transforms``."""

    size: int | tuple[int, int] = option(512, "crop size, an int or [height, width]", ge=1)
    scale: tuple[float, float] = option((0.5, 2.0), "scale-jitter range around size", gt=0)
    hflip: float = option(0.5, "horizontal flip probability", ge=0, le=1)
    color_jitter: float = option(0.2, "brightness/contrast/saturation jitter", ge=0)
    # semantic models (segzoo.data.transforms.semantic_transforms)
    crop: int | tuple[int, int] | None = option(None, "semantic: random crop [height, width] (default: size)", ge=1)
    base_size: int | tuple[int, int] | None = option(
        None, "semantic: the size the scale ratios are relative to (default: size); HRNet 2048, mmseg [1024, 2048]",
        ge=1)
    scale_step: float | None = option(None, "semantic: draw the scale ratio from a grid with this step (HRNet 0.1)",
                                      gt=0)
    cat_max_ratio: float = option(1.0, "semantic: redraw a crop where one class covers this share (mmseg 0.75)",
                                  gt=0, le=1)
    photometric: bool = option(False, "semantic: mmsegmentation's PhotoMetricDistortion")
    # detection and instance models (segzoo.data.transforms.instance_transforms)
    resize_short: int | tuple[int, ...] | None = option(
        None, "detection: shorter side length(s) to choose from (detectron2 / torchvision: 800)", ge=1)
    max_size: int = option(1333, "detection: cap of the longer side with resize_short", ge=1)
    affine: bool = option(False, "detection: CenterNet's random scale-and-shift crop to size")
    keep_res: bool = option(False, "detection with affine: evaluate at the image's own resolution "
                                   "(CenterNet --keep_res) instead of letterboxed to size")
    pca_lighting: float = option(0.0, "detection: CenterNet's PCA lighting noise (0.1); 0: off", ge=0)
    min_box_size: float = option(2.0, "detection: boxes smaller than this after augmentation are dropped", ge=0)
    crop_mode: str = option(
        "resized", "detection: resized (image fitted to size, then cropped), or crops at the image's own resolution "
        "(sliced training): random or object-centred (holding a random object)",
        choices=("resized", "random", "object-centred"))


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset of each split and how it is loaded (``data:``)."""

    type: str = option("shapes", "a segzoo.data.DATASET_TYPES key (shapes, coco, mask_folder, voc, yolo...) or auto")
    root: str = option("data/shapes", "shapes: where the generated files live")
    train: dict | None = option(None, "dataset arguments of the train split (see segzoo.data.build_dataset)")
    val: dict | None = option(None, "dataset arguments of the validation split")
    classes: tuple[str, ...] | None = option(None, "class names in label order: semantic data lists every label, "
                                             "background first (as num_classes counts); instance/detection data "
                                             "the object classes only. COCO and shapes take theirs from the files")
    binary: bool = option(False, "mask_folder: 0/255 masks, 255 -> label 1")
    mapping: dict | None = option(None, "mask_folder: {raw value: label}")
    ignore_index: int = option(255, "semantic label that is not scored")
    allow_empty: bool = option(False, "keep images without labels (reported as warnings)")
    check: bool = option(True, "run the data checks before training")
    max_image_pixels: int | None = option(
        None, "refuse image files declaring more pixels (width x height) than this before decoding them; null: "
              "SEGZOO_MAX_IMAGE_PIXELS or Pillow's 89478485; 0: no limit", ge=0)
    batch_size: int = option(8, "per process (global batch = batch_size x processes x grad_accum)", ge=1)
    val_batch_size: int | None = option(None, "evaluation batch size (default: batch_size)", ge=1)
    num_workers: int = option(2, "data-loading processes", ge=0)
    aspect_ratio_groups: int | None = option(
        None, "detection/instance/panoptic training: batches of one aspect-ratio group, this many bins per factor "
              "of two (torchvision's --aspect-ratio-group-factor, 3 in its recipes); null: off", ge=0)
    augment: AugmentConfig = option(AugmentConfig())


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """The optimisation schedule and the training loop's switches (``train:``)."""

    epochs: int = option(10, "passes over the training data", ge=1)
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)", ge=1)
    optimizer: str = option("sgd", choices=("sgd", "adamw"))
    lr: float = option(0.01, "base learning rate", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, le=1)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas", ge=0, lt=1)
    weight_decay: float = option(1.0e-4, "not applied to norms and biases", ge=0)
    backbone_lr_mult: float = option(1.0, "learning-rate multiplier of the model.backbone parameters", ge=0)
    freeze_backbone: bool = option(False, "model.backbone.freeze(): frozen BatchNorm and weights")
    freeze_backbone_bn: bool = option(False, "the backbone's BatchNorm as FrozenBatchNorm2d (torchvision's: ImageNet "
                                             "statistics and affine kept) while its weights train")
    schedule: str = option("poly", "poly | cosine | constant | step (multiplied by gamma at each milestone)",
                           choices=("poly", "cosine", "constant", "step"))
    poly_power: float = option(0.9, gt=0)
    milestones: tuple[int, ...] = option((), "schedule step: where the lr is multiplied by gamma (in milestone_unit)",
                                         ge=1)
    milestone_unit: str = option("epoch", "unit of train.milestones", choices=("epoch", "step"))
    gamma: float = option(0.1, "schedule step: lr factor at each milestone", gt=0, le=1)
    norm_bias_decay: bool = option(False, "also decay norm weights and biases (the official HRNet, mmsegmentation "
                                          "and torchvision recipes do)")
    min_lr_ratio: float = option(0.0, "floor of the decay, as a fraction of lr", ge=0, le=1)
    warmup_steps: int = option(0, "linear warmup steps", ge=0)
    warmup_factor: float = option(0.001, "lr multiplier at step 0 of the warmup", gt=0, le=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", ge=1)
    clip_grad: float | None = option(None, "max gradient norm; null: no clipping", gt=0)
    amp: str | bool = option("auto", "auto: bf16/fp16 on CUDA, off elsewhere", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = option(False)
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(False, "BatchNorm -> SyncBatchNorm under DDP on GPUs; no-op in a single process")
    ema: bool = option(False, "keep an EMA of the weights; it is evaluated, kept as best and saved as ema.safetensors")
    ema_decay: float = option(0.9998, "EMA decay per update: ema = decay * ema + (1 - decay) * weights", gt=0, lt=1)
    ema_every: int = option(1, "optimizer steps between EMA updates", ge=1)
    ema_warmup: bool = option(False, "decay min(ema_decay, (1 + n) / (10 + n)) after n updates (short runs)")
    grad_checkpointing: bool = option(False, "recompute the backbone's activations in backward (less memory)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps", pattern=r"auto|cpu|mps|cuda(:\d+)?")
    seed: int = option(0, "seeds initialisation, data order, augmentation and dropout", ge=0)
    checkpoint_every: int = option(0, "optimizer steps between checkpoints (0: at the end of each epoch; N: every N "
                                      "steps, after each evaluation and at the end)", ge=0)
    early_stop_patience: int = option(0, "evaluations without improvement before stopping (0: never)", ge=0)
    progress: bool = option(True, "tqdm progress bar")
    tensorboard: bool = option(True, "also log to TensorBoard when it is installed")
    loggers: tuple[str, ...] = option(("jsonl", "tensorboard"), "where runs are logged (log.jsonl is always written)",
                                      choices=("jsonl", "tensorboard", "mlflow", "wandb"))
    tracking_uri: str | None = option(None, "mlflow: tracking URI (default: MLFLOW_TRACKING_URI, else the file store "
                                            "<run folder>/mlruns)")
    experiment: str = option("segzoo", "mlflow experiment / wandb project")
    wandb_mode: str = option("offline", "wandb: offline (<run folder>/wandb; wandb sync uploads it) or online",
                             choices=("offline", "online"))


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Evaluation during training and in ``segzoo eval`` (``eval:``)."""

    every: int = option(1, "epochs between evaluations (0: only at the end)", ge=0)
    metric: str = option("auto", "picks the best checkpoint; auto: miou, segm_AP, bbox_AP or pq by task")
    max_images: int | None = option(None, "evaluate only the first images", ge=1)
    num_pictures: int = option(4, "validation images drawn in predictions.png", ge=0)
    score_threshold: float = option(0.5, "detections drawn in pictures (when fewer than 3 reach it, the best ones "
                                    "below it too, in parentheses); metrics use every detection", ge=0, le=1)
    # the semantic evaluation protocol (segzoo.inference.semantic_probs)
    mode: str = option("whole", "semantic: whole (the image in one forward) or slide (windows of eval.crop)",
                       choices=("whole", "slide"))
    crop: int | tuple[int, int] | None = option(None, "eval.mode slide: window [height, width]", ge=1)
    stride: int | tuple[int, int] | None = option(None, "eval.mode slide: window step (default: 2/3 of crop)", ge=1)
    resize: int | tuple[int, int] | None = option(
        None, "semantic: resize each image (aspect kept) to fit this size before the forward, logits back to the "
              "image (mmseg's test Resize, e.g. [512, 2048]); null: full resolution", ge=1)
    scales: tuple[float, ...] = option((1.0,), "semantic: image scales averaged (HRNet: 0.5 ... 1.75)", gt=0)
    flip: bool = option(False, "semantic: also average the horizontally flipped image")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole config: ``model`` (builder name and arguments) and the typed sections.

    Attributes:
        model: ``{"name": registered model, **builder keyword arguments}`` (read-only by convention).
        name: the run's name (the config file's stem), used for the default run folder.
    """

    model: dict = dataclasses.field(default_factory=dict)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-ready data (what :func:`load_config` reads back)."""
        return {"model": _plain(dict(self.model)), "data": self.data.to_dict(), "train": self.train.to_dict(),
                "eval": self.eval.to_dict()}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
# keys that configs of earlier versions had, and what to do instead
REMOVED = {"train.log_every": "it was never read (every optimizer step is logged); delete it"}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# ---------------------------------------------------------------------------- checks from the fields

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


# ---------------------------------------------------------------------------- YAML files and overrides


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


def dump(cfg: RunConfig) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
