"""Validate a run once and build everything it trains with; :class:`~segzoo.engine.trainer.Trainer` then loops.

The split is detectron2's: ``DefaultTrainer`` builds the model, data, optimizer and schedule from a
config, ``SimpleTrainer`` receives them and runs the steps. Here :func:`build_parts` builds (the
model moved to its device, frozen, converted and wrapped; the training batches; optimizer,
schedule, GradScaler, EMA; the run log and trackers, opened when training starts) and returns a
:class:`~segzoo.engine.trainer.TrainParts`; the Trainer checkpoints, resumes, evaluates and stops.

Checks run here and nowhere else, the cheap ones first: :func:`check_run` (the config against the
model: trackers installed, ``eval.metric``, the evaluation protocol), then the data
(:func:`check_data`, :func:`check_train_data`), then what building finds (an optimizer step larger
than the data, options the model cannot take). :func:`build_trainer` is the short way from a model
and datasets to a Trainer; :func:`segzoo.engine.train_from_config` builds the model and data from
the config too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import atomic_write
from segzoo.config import RunConfig, dump, parse_config
from segzoo.data import DataError, build_dataset, check_dataset
from segzoo.data.build import DATASET_TYPES
from segzoo.data.formats.detect import resolve_auto
from segzoo.data.samplers import aspect_ratio_groups, image_sizes
from segzoo.data.transforms import pop_dropped
from segzoo.engine.device import amp_dtype_for, select_device
from segzoo.engine.distributed import EpochLoader, ShardSampler, init_distributed, is_distributed, world_info
from segzoo.engine.ema import ModelEma
from segzoo.engine.logs import RunLog
from segzoo.engine.optim import build_optimizer, build_scheduler
from segzoo.engine.run_folder import CONFIG_FILE, LOG_FILE
from segzoo.engine.trackers import build_trackers, check_installed, flatten
from segzoo.engine.trainer import StepPlan, Trainer, TrainParts
from segzoo.registry import build, builder_defaults
from segzoo.tasks import Task, get_task

__all__ = ["Checked", "build_datasets", "build_model", "build_parts", "build_split", "build_trainer",
           "check_augmentation", "check_data", "check_run", "check_train_data", "has_val", "start_device"]


# ---------------------------------------------------------------------------- model and data
def build_model(cfg: RunConfig):
    """``segzoo.build(model.name, **other model keys)``, seeded with ``train.seed``."""
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    torch.manual_seed(cfg.train.seed)
    return build(cfg.model["name"], **kwargs)


def model_defaults(cfg: RunConfig) -> dict[str, Any]:
    """What the builder of ``model.name`` uses for the keys the config does not set (``config.yaml`` shows them)."""
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    return builder_defaults(cfg.model["name"], kwargs) if cfg.model.get("name") else {}


def has_val(cfg: RunConfig) -> bool:
    return cfg.data.type in ("shapes", "shapes_panoptic", "shapes_multilabel") or bool(cfg.data.val)


def build_split(cfg: RunConfig, split: str, task: Any, train: bool | None = None, with_transforms: bool = True):
    """The dataset of one split (``"train"`` or ``"val"``) with the task's transform preset; ``task`` a task name or
    the model (whose label mode decides the target kind: multi-hot masks for ``multilabel``). A universal model
    reads the richest target kind the reader offers."""
    task_def = get_task(task)
    kind = cfg.data.type
    root = (getattr(cfg.data, split, None) or {}).get("root")
    if kind == "auto" and root:  # the reader that auto finds: a universal model reads its richest target
        kind = resolve_auto(root, split)[0]
    offered = getattr(DATASET_TYPES.get(kind), "targets", None)
    target = task_def.data_target(offered) if offered is not None else task_def.target
    return build_dataset(cfg.data, split, target, train=train, with_transforms=with_transforms)


def build_datasets(cfg: RunConfig, task: Any):
    """``(train_set, val_set or None)`` with the task's transform presets."""
    train_set = build_split(cfg, "train", task)
    val_set = build_split(cfg, "val", task) if has_val(cfg) else None
    return train_set, val_set


# ---------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Checked:
    """What :func:`check_run` derived from the config and the model, handed on so nothing is checked twice."""

    metric_name: str  # the metric that picks the best checkpoint (eval.metric resolved for the task)
    eval_protocol: dict[str, Any]  # evaluate()'s protocol arguments


def check_run(cfg: RunConfig, model: nn.Module) -> Checked:
    """The checks of the config against the model, before any work: every tracker of ``train.loggers``
    can start, the model is a segzoo model, ``eval.metric`` is one of its task's metrics and the
    evaluation protocol fits its task."""
    check_installed(cfg.train.loggers)  # a tracker that cannot start fails before any work
    if not hasattr(model, "spec"):
        raise TypeError("the model has no spec; build it with segzoo.build(name, ...)")
    task = get_task(model)
    return Checked(task.primary_metric(cfg.eval.metric), task.protocol(cfg.eval))


def check_data(cfg: RunConfig, num_classes: int, task: Any, print_fn=print) -> list:
    """Run the data checks on the train (and val) splits; returns the reports. ``task``: a task name or the model
    (then ``num_classes`` is what its data counts: a binary model's one logit scores two labels)."""
    if not isinstance(task, str):
        num_classes = get_task(task).data_classes(task)
    reports = []
    for split in ("train", "val") if has_val(cfg) else ("train",):
        ds = build_split(cfg, split, task, with_transforms=False)
        report = check_dataset(ds, num_classes, name=split, ignore_index=cfg.data.ignore_index,
                               allow_empty=cfg.data.allow_empty)
        if print_fn is not None:
            print_fn(report.format())
        reports.append(report)
    return reports


def check_augmentation(cfg: RunConfig, train_set, samples: int = 8) -> None:
    """Refuse augmentation settings that remove every box: the training transforms are run on up to
    ``samples`` images with objects (the random state is restored) and must keep at least one."""
    dropped = kept = 0
    with torch.random.fork_rng():
        for i in torch.linspace(0, len(train_set) - 1, min(samples, len(train_set))).long().tolist():
            target = train_set[i][1]
            d, k, _ = pop_dropped([dict(target)] if isinstance(target, dict) else None)
            dropped, kept = dropped + d, kept + k
    if dropped and not kept:
        aug = cfg.data.augment
        raise DataError(f"the training augmentation removes every target: in {min(samples, len(train_set))} training "
                        f"images it dropped all {dropped} boxes (data.augment.min_box_size={aug.min_box_size}, "
                        f"size={aug.size}, scale={list(aug.scale)}); lower data.augment.min_box_size or raise "
                        "data.augment.size so that objects survive the crop")


def check_train_data(cfg: RunConfig, model: nn.Module, train_set) -> None:
    """The built training set against the model: its targets fit the task and the augmentation keeps objects."""
    if len(train_set):
        get_task(model).check_data(train_set[0][1], cfg.model["name"])
        check_augmentation(cfg, train_set)


# ---------------------------------------------------------------------------- the parts of a run
def start_device(cfg: RunConfig) -> torch.device:
    """This process's ``train.device`` (its local rank's GPU under torchrun), with the process group started."""
    _, _, local_rank = world_info()
    device = select_device(cfg.train.device, local_rank)
    init_distributed(device)
    return device


def plan_steps(cfg: RunConfig, num_images: int, world_size: int) -> StepPlan:
    """Optimizer steps per epoch and in all, and ``train.milestones`` in steps."""
    tc = cfg.train
    global_batch = cfg.data.batch_size * world_size * tc.grad_accum
    steps_per_epoch = num_images // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training data has {num_images} images but one optimizer step needs "
            f"data.batch_size x processes x train.grad_accum = {global_batch}; lower data.batch_size")
    milestones = tuple(m * steps_per_epoch if tc.milestone_unit == "epoch" else m
                       for m in tc.milestones)  # in optimizer steps
    return StepPlan(steps_per_epoch, tc.max_steps or tc.epochs * steps_per_epoch, milestones)


def _freeze_backbone(model: nn.Module, params: bool = True) -> None:
    """train.freeze_backbone (BatchNorm and weights) or train.freeze_backbone_bn (BatchNorm only)."""
    backbone = getattr(model, "backbone", None)
    which = "freeze_backbone" if params else "freeze_backbone_bn"
    if not callable(getattr(backbone, "freeze", None)):
        raise ValueError(f"train.{which} is set but {model.spec.name} has no model.backbone with a "
                         "freeze() method (segzoo backbones have one)")
    backbone.freeze(bn=True, params=params)


def _sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm under DDP (statistics over the global batch), as torchvision's
    references do with ``--sync-bn``; in a single process there is nothing to synchronise and
    the model is left as it is."""
    if not is_distributed():
        return model
    if device.type != "cuda":
        raise ValueError(f"train.sync_bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only) but this "
                         f"run trains on {device.type}; set train.sync_bn=false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def prepare_model(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    """The model on ``device`` with ``train.freeze_backbone(_bn)``, ``grad_checkpointing``, ``sync_bn``
    and ``channels_last`` applied (the unwrapped module that checkpoints save)."""
    tc = cfg.train
    model = model.to(device)
    if tc.freeze_backbone or tc.freeze_backbone_bn:
        _freeze_backbone(model, params=tc.freeze_backbone)
    if tc.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if tc.sync_bn:
        model = _sync_bn(model, device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _aspect_ratio_groups(cfg: RunConfig, task: Task, train_set) -> list[int] | None:
    """``data.aspect_ratio_groups``: each training image's aspect-ratio group, or None (off)."""
    k = cfg.data.aspect_ratio_groups
    if k is None:
        return None
    task.check_aspect_ratio_groups()  # semantic training crops every image to one size
    try:
        sizes = image_sizes(train_set)
    except TypeError as e:
        raise ValueError(f"data.aspect_ratio_groups needs the training images' sizes: {e}") from None
    return aspect_ratio_groups(sizes, k)


def build_loader(cfg: RunConfig, task: Task, train_set, plan: StepPlan, device: torch.device) -> EpochLoader:
    """The training batches: this rank's shard of each epoch's shuffle, in ``data.batch_size`` micro-batches."""
    rank, world_size, _ = world_info()
    dc, seed = cfg.data, cfg.train.seed
    sampler = ShardSampler(len(train_set), rank, world_size, shuffle=True, seed=seed,
                           num_samples_per_rank=plan.steps_per_epoch * cfg.train.grad_accum * dc.batch_size)
    return EpochLoader(train_set, sampler, dc.batch_size, collate_fn=task.collate, seed=seed,
                       num_workers=dc.num_workers, pin_memory=device.type == "cuda",
                       group_ids=_aspect_ratio_groups(cfg, task, train_set))


def open_run_log(cfg: RunConfig, out_dir: Path, num_classes: int, task: str, resume: bool, step: int,
                 closed: bool) -> RunLog:
    """Write ``config.yaml`` and open ``log.jsonl`` with the trackers of ``train.loggers`` (main process;
    called once the run folder is prepared and a resumed checkpoint loaded: its log is cut back to ``step``)."""
    tc = cfg.train
    atomic_write(out_dir / CONFIG_FILE, dump(cfg, model_defaults(cfg)).encode())
    trackers = build_trackers(tc.loggers, out_dir, cfg.name or out_dir.name, resume, tracking_uri=tc.tracking_uri,
                              experiment=tc.experiment, wandb_mode=tc.wandb_mode)
    log = RunLog(out_dir / LOG_FILE, tc.tensorboard and "tensorboard" in tc.loggers, step if resume else None,
                 closed, trackers)
    log.log_params({**flatten(cfg.to_dict()), "model.num_classes": num_classes, "model.task": task})
    return log


def build_parts(cfg: RunConfig, model: nn.Module, train_set, val_set, out_dir: str | Path,
                classes: list[str] | None = None, *, device: torch.device, checked: Checked) -> TrainParts:
    """Everything the Trainer loops over, built in this order: the prepared model, the step plan and
    the training batches, optimizer, schedule and GradScaler, the DDP wrapper, the EMA, ``torch.compile``.

    Args:
        cfg: the run's config.
        model: a segzoo model (seeded already; it is moved to ``device``).
        train_set, val_set: the datasets (``val_set`` None: no evaluation).
        out_dir: the run folder.
        classes: class names for checkpoints and pictures (kept when there is one per class).
        device: from :func:`start_device`.
        checked: from :func:`check_run`.
    """
    get_task(model).check_categories(model, train_set)  # panoptic: the data's thing/stuff split is the model's
    tc = cfg.train
    _, world_size, _ = world_info()
    amp_dtype = amp_dtype_for(tc.amp, device)
    model = prepare_model(model, cfg, device)
    plan = plan_steps(cfg, len(train_set), world_size)
    loader = build_loader(cfg, get_task(model), train_set, plan, device)
    optimizer = build_optimizer(model, name=tc.optimizer, lr=tc.lr, weight_decay=tc.weight_decay,
                                momentum=tc.momentum, betas=tc.betas, backbone_lr_mult=tc.backbone_lr_mult,
                                norm_bias_decay=tc.norm_bias_decay)
    scheduler = build_scheduler(optimizer, total_steps=plan.total_steps, schedule=tc.schedule,
                                warmup_steps=tc.warmup_steps, warmup_factor=tc.warmup_factor, poly_power=tc.poly_power,
                                min_lr_ratio=tc.min_lr_ratio, milestones=plan.milestones, gamma=tc.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    net: nn.Module = model
    ddp = None
    if is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        ddp = net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # the average of the weights that is evaluated, kept as best and saved as ema.safetensors;
    # made after DDP has given every rank the weights of rank 0
    ema = ModelEma(model, tc.ema_decay, tc.ema_warmup) if tc.ema else None
    if tc.compile:
        net = torch.compile(net)
    num_classes = model.spec.num_classes
    out_dir = Path(out_dir)
    return TrainParts(
        cfg=cfg, model=model, net=net, ddp=ddp, ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        loader=loader, val_set=val_set, device=device, amp_dtype=amp_dtype, plan=plan,
        metric_name=checked.metric_name, eval_protocol=checked.eval_protocol,
        classes=list(classes) if classes is not None and len(classes) == model.spec.num_labels else None,
        out_dir=out_dir,
        open_log=functools.partial(open_run_log, cfg, out_dir, num_classes, model.task))


def build_trainer(model: nn.Module, train_set, val_set=None, cfg: RunConfig | Mapping | None = None,
                  out_dir: str | Path = "runs/train", classes: list[str] | None = None,
                  on_step=None) -> Trainer:
    """Validate and build a run from a model and datasets, and return its :class:`Trainer` (call ``fit``).

    Args:
        model: a model built by ``segzoo.build`` (it has ``model.spec`` and ``model.task``).
        train_set: items ``(image, target)`` already transformed (float images in [0, 1]).
        val_set: evaluated every ``eval.every`` epochs; None skips evaluation.
        cfg: a :class:`~segzoo.config.RunConfig`, or a mapping with some of its ``data`` /
            ``train`` / ``eval`` keys (the rest take their defaults).
        out_dir: the run folder.
        classes: class names stored in checkpoints and used in pictures.
        on_step: called as ``on_step(trainer)`` after every optimizer step (and checkpoint).
    """
    cfg = cfg if isinstance(cfg, RunConfig) else parse_config(cfg or {}, require_model=False)
    checked = check_run(cfg, model)
    device = start_device(cfg)
    parts = build_parts(cfg, model, train_set, val_set, out_dir, classes, device=device, checked=checked)
    return Trainer(parts, on_step=on_step)
