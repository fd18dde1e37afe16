"""What a built model is, as data: :class:`ModelSpec`, the task names and the ImageNet statistics.

This module imports nothing from segzoo, so the registry (which writes specs) and the
checkpoint module (which reads them) both stand on it without importing each other.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class TaskTraits:
    """What inference and export need to know of a task; :mod:`segzoo.tasks` holds the rest of each task
    object (metric, collate, pictures) and exposes these as ``get_task(name).traits``.

    Attributes:
        name: the task name (one of :data:`TASKS`).
        dense: the model returns ``N x C x H x W`` logits (else a list of per-image dicts).
        tta: test-time augmentation (scales, flips) applies.
        tiling: tiled (sliding-window) inference applies.
        dynamic_export: the export can leave batch, height and width free.
        label_modes: how the model's outputs can be read (:data:`LABEL_MODES`); the first is the default.
    """

    name: str
    dense: bool
    tta: bool
    tiling: bool
    dynamic_export: bool
    label_modes: tuple[str, ...] = ("multiclass",)


#: How a semantic model's logits are read: ``multiclass`` (one softmax over ``num_classes`` labels, background
#: included), ``binary`` (one logit, a sigmoid and a threshold) or ``multilabel`` (one sigmoid per class: a pixel
#: may carry several labels, or none). smp's loss ``mode`` argument, made a property of the model.
LABEL_MODES = ("multiclass", "binary", "multilabel")

TASK_TRAITS = {
    "semantic": TaskTraits("semantic", dense=True, tta=True, tiling=True, dynamic_export=True, label_modes=LABEL_MODES),
    "detection": TaskTraits("detection", dense=False, tta=False, tiling=True, dynamic_export=False),
    "instance": TaskTraits("instance", dense=False, tta=False, tiling=True, dynamic_export=False),
    # segments of different tiles cannot be merged by NMS
    "panoptic": TaskTraits("panoptic", dense=False, tta=False, tiling=False, dynamic_export=False),
    # set prediction (Mask2Former, EoMT): semantic + instance + panoptic from one forward; the export is the
    # logits (class and mask) at any size, the merges run on the host
    "universal": TaskTraits("universal", dense=False, tta=False, tiling=False, dynamic_export=True),
}

#: Task names, the rows of :data:`TASK_TRAITS`. A model has one, its class attribute ``task``: ``semantic``
#: (logits per pixel), ``detection`` (boxes), ``instance`` (boxes and masks), ``panoptic`` (things and stuff
#: segments), ``universal`` (a set of (class, mask) pairs merged into all of semantic, instance and panoptic;
#: such a model lists them in ``tasks``).
TASKS = tuple(TASK_TRAITS)


def task_traits(task: str) -> TaskTraits:
    """The :class:`TaskTraits` of a task name; a ValueError names the known tasks."""
    try:
        return TASK_TRAITS[task]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: JSON-serialisable and stored in checkpoints.

    Attributes:
        name: registered entrypoint name, e.g. ``"fcn_resnet50"``.
        task: the built model's ``task`` (one of :data:`TASKS`).
        num_classes: semantic: every label including background; detection and instance:
            object classes only (background is implicit).
        kwargs: the builder keyword arguments given at build time (``backbone`` included),
            except file paths (``weights``, ``backbone_weights``).
        mean: per-channel mean the model subtracts from [0, 1] RGB input.
        std: per-channel std the model divides by.
        threshold: binary models: the probability from which a pixel is foreground (the F1-maximising
            threshold of the validation PR curve, set by training; None: 0.5). Left out of the JSON when None.

    ``label_mode`` (how the logits are read, :data:`LABEL_MODES`) is a builder argument, so it lives in
    ``kwargs`` like every other one; the :attr:`label_mode` property reads it.
    """

    name: str
    task: str
    num_classes: int
    kwargs: dict = dataclasses.field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    threshold: float | None = None

    @property
    def label_mode(self) -> str:
        """``multiclass`` (the default), ``binary`` or ``multilabel``: the builder argument of that name."""
        return str(self.kwargs.get("label_mode", LABEL_MODES[0]))

    @property
    def num_labels(self) -> int:
        """The labels the data holds and ``classes`` names: ``num_classes``, except a binary model's one logit,
        which scores two (background and foreground)."""
        return 2 if self.label_mode == "binary" else self.num_classes

    @property
    def display_name(self) -> str:
        """The name with the backbone actually built when it is not the entrypoint's default,
        e.g. ``"maskrcnn_resnet50_fpn (backbone=resnet18)"``: what tools print."""
        backbone = self.kwargs.get("backbone")
        return self.name if backbone is None else f"{self.name} (backbone={backbone})"

    def describe(self) -> str:
        """One line for logs and reports: display name, task and class count."""
        mode = "" if self.label_mode == LABEL_MODES[0] else f" ({self.label_mode})"
        return f"{self.display_name}: {self.task}{mode}, {self.num_classes} classes"

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if data["threshold"] is None:  # left out at its default: older headers stay byte-equal
            del data["threshold"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"ModelSpec has unknown fields {sorted(unknown)}")
        data["mean"] = tuple(data.get("mean", IMAGENET_MEAN))
        data["std"] = tuple(data.get("std", IMAGENET_STD))
        t = data.get("threshold")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1):
            raise ValueError(f"ModelSpec threshold must be a probability in (0, 1) or null, got {t!r}")
        return cls(**data)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LABEL_MODES", "TASKS", "TASK_TRAITS", "ModelSpec", "TaskTraits",
           "task_traits"]
