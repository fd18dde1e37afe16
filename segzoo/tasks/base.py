"""The task interface: :class:`Task` (what a task brings) and :class:`TaskMetric` (its metric).

A task object holds everything that differs between semantic, detection, instance and panoptic
models, so that the trainer, the evaluator, the CLI and the reports ask it instead of comparing
task names. Its metric follows detectron2's ``DatasetEvaluator``: :meth:`TaskMetric.reset`,
:meth:`TaskMetric.update` per batch, :meth:`TaskMetric.compute` once at the end (which first
reduces the state across DDP ranks, so every rank returns the same numbers).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segzoo.config import ConfigError, EvalConfig
from segzoo.data.targets import Target
from segzoo.data.transforms import build_transforms
from segzoo.inference import check_tta
from segzoo.spec import TaskTraits, task_traits

PANEL_TITLES = ("image", "prediction", "ground truth")
TOP_K = 3  # detections drawn below the score threshold when fewer than this reach it
PROTOCOL_KEYS = ("mode", "crop", "stride", "resize", "scales", "flip")  # the semantic eval.* protocol

#: An evaluated item: ``(index in the dataset, image 3 x H x W, target)``.
Item = tuple[int, torch.Tensor, Any]


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How :func:`segzoo.engine.evaluate` runs (see its docstring for each field)."""

    batch_size: int = 1
    num_workers: int = 0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    tile: int | Sequence[int] | None = None
    overlap: float = 0.25
    tta: str | dict | bool | None = None
    stride: int | Sequence[int] | None = None
    blend: str = "tent"
    resize: int | Sequence[int] | None = None
    max_images: int | None = None
    class_names: Sequence[str] | None = None
    ignore_index: int = 255
    curves: bool = False
    num_pictures: int = 0
    score_threshold: float = 0.5
    progress: bool = False


@dataclasses.dataclass(frozen=True)
class Labels:
    """The classes an evaluation scores and draws: ``names`` (None when neither the model nor the data
    names all ``num_classes``), the semantic ``ignore_index`` and the panoptic ``num_things``."""

    num_classes: int
    names: list[str] | None = None
    ignore_index: int = 255
    num_things: int | None = None

    @property
    def shown_names(self) -> list[str]:
        """``names``, or the class indices as strings."""
        return list(self.names) if self.names is not None else [str(i) for i in range(self.num_classes)]


class TaskMetric(ABC):
    """One metric interface for every task (detectron2's ``DatasetEvaluator``)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every image seen."""

    @abstractmethod
    def update(self, items: Sequence[Item], predictions: Any) -> None:
        """Add a batch: ``items`` as the loader gives them, ``predictions`` from :meth:`Task.forward`."""

    @abstractmethod
    def compute(self) -> dict[str, Any]:
        """Reduce across DDP ranks, then the result parts: ``{"metrics": {...}, ...}`` (``confusion``,
        ``coco_summary``, ``pr_curves`` where the task has them)."""


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


class Task(ABC):
    """What a task brings. Subclasses set the class attributes and implement the abstract methods.

    Attributes:
        name: the task name, as in ``model.task`` and checkpoints.
        primary: the metric that picks the best checkpoint for ``eval.metric=auto``.
        summary: the metrics of the one-line summary, after the tracked one.
        pr_metric: the metric name of the precision-recall curves' mean AP (None: no curves).
        pr_title: the title of ``pr_curves.png``.
    """

    name: str
    primary: str
    summary: tuple[str, ...]
    pr_metric: str | None = None
    pr_title: str = "Precision-recall"

    @property
    def traits(self) -> TaskTraits:
        """What inference and export need (:class:`segzoo.spec.TaskTraits`)."""
        return task_traits(self.name)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def for_model(self, model: Any) -> Task:
        """The task object for one model: itself, or the variant of the model's label mode (semantic)."""
        return self

    def data_classes(self, model: Any) -> int:
        """The labels the data and the metric count for ``model`` (its ``num_classes``; binary semantic: 2)."""
        return int(model.num_classes)

    def tune(self, model: Any, metrics: dict[str, Any]) -> float | None:
        """Adopt what a validation picks (a binary model's threshold) into ``model.spec``; None when nothing."""
        return None

    # ------------------------------------------------------------------ metric names and summaries

    @abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """The scalar metrics an evaluation returns (each can be ``eval.metric``)."""

    def primary_metric(self, name: str | None = "auto") -> str:
        """The metric that picks the best checkpoint: :attr:`primary` for ``auto``; any other name must be one
        of :meth:`metric_names`, or a ConfigError names the closest."""
        if name in (None, "auto"):
            return self.primary
        names = self.metric_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"eval.metric={name!r} is not a metric of {self.name} models; {hint}use auto or one "
                              f"of {', '.join(names)}")
        return name

    def summary_line(self, metrics: dict[str, Any], tracked: str | None = None) -> str:
        """``miou=0.8123, pixel_acc=...``: the tracked metric first, then the task's usual ones."""
        keys = dict.fromkeys([tracked or self.primary, *self.summary])
        return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))

    # ------------------------------------------------------------------ data

    @abstractmethod
    def check_data(self, target: Any, model_name: str = "the model") -> None:
        """Refuse data whose targets do not fit the task, naming both."""

    def check_categories(self, model: nn.Module, data) -> None:
        """Refuse data whose categories do not fit the model (panoptic: its thing/stuff split)."""
        return None  # none by default

    def check_aspect_ratio_groups(self) -> None:
        """Refuse ``data.aspect_ratio_groups`` where the task's training batches have one size."""
        return None  # none by default

    @property
    @abstractmethod
    def target(self) -> Target:
        """What a dataset item's target holds for this task (:mod:`segzoo.data.targets`): the data
        package builds, transforms and collates by it and never sees the task's name."""

    def data_target(self, offered: Sequence[Target]) -> Target:
        """The target kind to read from a reader that offers ``offered`` (its ``targets``): :attr:`target`;
        the universal task picks the richest one."""
        return self.target

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called by the trainer before each optimizer step (``step`` 0-based of ``total_steps``): the universal
        task drives the model's per-step schedule (EoMT's masked-attention annealing)."""
        return None  # nothing by default

    @property
    def collate(self) -> Callable:
        """The training loader's collate function (the target kind's)."""
        return self.target.collate

    def transforms(self, train: bool, **augment: Any):
        """The task's transform preset with the config's ``data.augment`` options."""
        return build_transforms(self.target, train, **augment)

    # ------------------------------------------------------------------ evaluation

    def protocol(self, ec: EvalConfig) -> dict[str, Any]:
        """The :class:`EvalOptions` fields of a config's evaluation protocol (``eval.mode``, ``crop``, ``stride``,
        ``resize``, ``scales``, ``flip``): only semantic models take them; the others get ``{}`` and a
        ConfigError when one is set."""
        default = EvalConfig()
        changed = [k for k in PROTOCOL_KEYS if getattr(ec, k) != getattr(default, k)]
        if changed:
            raise ConfigError(f"eval.{changed[0]} sets a semantic evaluation protocol but the model's task is "
                              f"{self.name}; remove it (detection sizes come from data.augment)")
        return {}

    def check_options(self, opts: EvalOptions) -> None:
        """Refuse evaluation options the task has no use for."""
        check_tta(self.name, opts.tta, opts.tile)
        if opts.resize is not None or opts.stride is not None:
            raise ValueError(f"eval.resize and eval.stride apply to semantic models; this model's task is "
                             f"{self.name!r} (its size comes from the data transforms)")

    @abstractmethod
    def forward(self, model: nn.Module, images: list[torch.Tensor], device: torch.device, opts: EvalOptions):
        """Predictions for same-size images (run under the caller's autocast), as :meth:`TaskMetric.update`
        and :meth:`shown` take them."""

    def shown(self, predictions) -> list:
        """One prediction per image as :meth:`draw` takes it."""
        return list(predictions)

    @abstractmethod
    def metric(self, model: nn.Module, data, labels: Labels, *, curves: bool = False) -> TaskMetric:
        """A fresh metric for ``model`` on ``data``; ``curves`` adds precision-recall curves where the task
        has them."""

    @abstractmethod
    def draw(self, image: torch.Tensor, pred, target, labels: Labels, score_threshold: float = 0.5) -> torch.Tensor:
        """``image | prediction | ground truth [| legend]``: one uint8 panel."""

    # ------------------------------------------------------------------ reports

    @abstractmethod
    def format_results(self, result: dict[str, Any]) -> str:
        """The metric table of an evaluation result."""

    def write_tables(self, result: dict[str, Any], out, write: Callable[[Any, bytes], None]) -> None:
        """Write the task's extra tables of an evaluation into folder ``out`` with ``write(path, data)``."""
        return None  # none by default

    def plot(self, result: dict[str, Any], out) -> None:
        """Draw the task's extra plots of an evaluation into folder ``out`` (needs matplotlib)."""
        return None  # none by default

    @abstractmethod
    def describe_prediction(self, result: dict[str, Any], name: Callable[[int], str], score_thresh: float,
                            keep_thresh: float) -> str:
        """What ``segzoo infer`` prints of one image's :func:`segzoo.predict` result (before ``-> FILES``)."""
