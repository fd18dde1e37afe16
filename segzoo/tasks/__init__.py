"""One object per task: semantic, detection, instance and panoptic.

Each task object brings its metric (``reset``/``update``/``compute``, the DDP reduce included), its
training collate, its transform preset, its evaluation forward, its picture drawer, its metric names,
summary line and report tables, and its data checks; the trainer, :func:`segzoo.engine.evaluate`,
the CLI and the reports ask it instead of comparing task names. ``model.task`` stays a string (in
:class:`~segzoo.spec.ModelSpec` and checkpoints); :func:`get_task` turns it into the object::

    task = get_task(model)             # or get_task("semantic")
    metric = task.metric(model, data, labels)
    metric.reset()
    for items in batches:
        metric.update(items, task.forward(model, [im for _, im, _ in items], device, opts))
    result = metric.compute()          # {"metrics": {...}, "confusion" | "coco_summary", ...}

A universal model (Mask2Former, EoMT) has the task ``universal`` (:class:`UniversalTask`: its metric scores
semantic, instance and panoptic from one forward, as far as the data's target kind allows) and lists the
three in ``model.tasks``; :func:`get_tasks` gives those three, :func:`get_task` the ``universal`` one.

Adding a task: a subclass of :class:`Task` in a module of this package (listed in :data:`TASK_OBJECTS`)
and its row in the one table of task names, :data:`segzoo.spec.TASK_TRAITS` (what inference and export,
which sit below the task objects, need to know).
"""

from __future__ import annotations

from typing import Any

from segzoo.spec import TASKS
from segzoo.tasks.base import EvalOptions, Labels, Task, TaskMetric
from segzoo.tasks.detection import CocoMetric, DetectionTask, InstanceTask, coco_table
from segzoo.tasks.panoptic import PanopticMetric, PanopticTask, panoptic_table
from segzoo.tasks.semantic import SemanticMetric, SemanticTask
from segzoo.tasks.universal import UniversalMetric, UniversalTask

TASK_OBJECTS: dict[str, Task] = {t.name: t for t in (SemanticTask(), DetectionTask(), InstanceTask(), PanopticTask(),
                                                    UniversalTask())}
assert tuple(TASK_OBJECTS) == TASKS, "segzoo.spec.TASKS and the task objects must list the same tasks"


def get_task(task: Any) -> Task:
    """The task object of a task name, a :class:`Task` (returned as is) or a model (its ``model.task``, in the
    variant of its ``label_mode`` for semantic models: :meth:`Task.for_model`).

    Raises:
        ValueError: an unknown task name, naming the known ones.
    """
    if isinstance(task, Task):
        return task
    name = task if isinstance(task, str) else getattr(task, "task", None)
    if not isinstance(name, str):
        raise TypeError(f"get_task takes a task name, a Task or a model with a .task attribute; got {type(task)}")
    try:
        found = TASK_OBJECTS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASK_OBJECTS)}") from None
    return found if isinstance(task, str) else found.for_model(task)  # a model: its label mode's variant


def get_tasks(model: Any) -> tuple[Task, ...]:
    """Every task a model can be evaluated as: its ``model.tasks`` (universal models), else its ``model.task``."""
    names = getattr(model, "tasks", None) or (model.task,)
    return tuple(get_task(n) for n in names)


__all__ = [
    "TASK_OBJECTS", "CocoMetric", "DetectionTask", "EvalOptions", "InstanceTask", "Labels", "PanopticMetric",
    "PanopticTask", "SemanticMetric", "SemanticTask", "Task", "TaskMetric", "coco_table", "get_task", "get_tasks",
    "UniversalMetric", "UniversalTask", "panoptic_table",
]
