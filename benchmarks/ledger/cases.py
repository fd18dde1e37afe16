"""The ledger's cases: a segzoo model, its peer (if any), the real-data recipe both train with, the metrics.

A recipe is a segzoo config (``data`` / ``train`` / ``eval`` sections, see :mod:`segzoo.config`):
the segzoo side trains with it through :class:`segzoo.engine.Trainer`, the peer side reads the
same sections in the reference loop (:mod:`.train`). Random initialisation on both sides, no
pretrained weights: the peer's model is built with a fixed seed and its weights are mapped
into the segzoo model, so both start from identical weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import segzoo

from .peers import PeerAdapter, rcnn_pair, segformer_pair, unet_pair, upernet_pair

# both R-CNN sides: anchors for 6-70 px objects on 128-256 px tiles, and fewer sampled RoIs
# than the COCO defaults (2000 / 512) for tiles with about ten objects each: 4x cheaper on a CPU
RCNN_OPTIONS = {"anchor_sizes": (16, 32, 64, 128, 256), "rpn_post_nms_top_n_train": 500,
                "box_batch_size_per_image": 128}


@dataclasses.dataclass(frozen=True)
class Metric:
    """One reported number: ``label`` in the table, read from :func:`segzoo.engine.evaluate`'s metrics."""

    label: str
    key: str
    index: int | None = None  # per-class lists (semantic ``dice``/``iou``): the class to read

    def read(self, metrics: dict[str, Any]) -> float:
        value = metrics[self.key]
        return float(value[self.index] if self.index is not None else value)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row group of the ledger.

    Attributes:
        name: the case's name on the command line.
        data_name: what it is trained on, for the table.
        model: the segzoo model as built (name and arguments), for the table.
        peer: the peer model, for the table; None when there is no pip-installable peer.
        build: ``build(seed, **model options) -> (segzoo model, peer adapter or None)``, identical weights
            when paired; the options go to both sides.
        recipe: the ``data`` / ``train`` / ``eval`` config sections (``train.max_steps`` and ``seed`` are set per run).
        metrics: the reported numbers.
        steps: the default step budget.
    """

    name: str
    data_name: str
    model: str
    peer: str | None
    build: Callable[..., tuple[nn.Module, PeerAdapter | None]]
    recipe: dict[str, Any]
    metrics: tuple[Metric, ...]
    steps: int


def _recipe(data_type: str, tile: int, batch: int, train: dict[str, Any], scale=(0.75, 1.5)) -> dict[str, Any]:
    return {
        "data": {"type": data_type, "train": {"tile_size": tile}, "val": {"tile_size": tile}, "batch_size": batch,
                 "val_batch_size": 4, "num_workers": 0, "check": False,
                 "augment": {"size": tile, "scale": list(scale), "hflip": 0.5, "color_jitter": 0.2}},
        "train": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False, **train},
        "eval": {"every": 0, "num_pictures": 0},
    }


def _unet(seed: int, **overrides):
    return unet_pair("resnet34", 2, seed)


def _segformer(seed: int, **overrides):
    return segformer_pair("b0", 2, seed)


def _upernet(seed: int, **overrides):
    return upernet_pair("resnet34", 2, seed)


def _rcnn(name: str):
    def build(seed: int, **overrides):
        return rcnn_pair(name, 1, seed, backbone="resnet18", **{**RCNN_OPTIONS, **overrides})

    return build


def _centernet(seed: int, **overrides):
    torch.manual_seed(seed)
    return segzoo.build("centernet_resnet18", num_classes=1), None


ADAMW = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 10}
SGD = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine",
       "warmup_steps": 20, "clip_grad": 10.0}

CASES: dict[str, Case] = {c.name: c for c in (
    Case("nuclei_semantic", "nuclei (stardist), 128 px tiles", "unet_resnet34", "smp Unet('resnet34')",
         _unet, _recipe("nuclei", 128, 4, ADAMW),
         (Metric("nucleus Dice", "dice", 1), Metric("nucleus IoU", "iou", 1)), steps=100),
    Case("nuclei_segformer", "nuclei (stardist), 128 px tiles", "segformer_b0",
         "smp Segformer(encoder_name='mit_b0')", _segformer, _recipe("nuclei", 128, 4, ADAMW),
         (Metric("nucleus Dice", "dice", 1), Metric("nucleus IoU", "iou", 1)), steps=100),
    Case("nuclei_upernet", "nuclei (stardist), 128 px tiles",
         "upernet_resnet50 (backbone resnet34, channels 256, out_norm_eps 1e-6, no aux head)",
         "smp UPerNet('resnet34')", _upernet, _recipe("nuclei", 128, 4, ADAMW),
         (Metric("nucleus Dice", "dice", 1), Metric("nucleus IoU", "iou", 1)), steps=100),
    Case("nuclei_instance", "nuclei (stardist), 128 px tiles", "maskrcnn_resnet50_fpn (backbone resnet18)",
         "torchvision MaskRCNN (resnet_fpn_backbone('resnet18'))",
         _rcnn("maskrcnn_resnet50_fpn"),
         _recipe("nuclei", 128, 4, SGD), (Metric("mask AP", "segm_AP"), Metric("mask AP50", "segm_AP50")),
         steps=80),
    Case("tree_crowns", "tree crowns (deepforest), 256 px tiles", "fasterrcnn_resnet50_fpn (backbone resnet18)",
         "torchvision FasterRCNN (resnet_fpn_backbone('resnet18'))",
         _rcnn("fasterrcnn_resnet50_fpn"),
         _recipe("tree_crowns", 256, 2, SGD), (Metric("box AP50", "bbox_AP50"), Metric("box AP", "bbox_AP")),
         steps=100),
    Case("tree_crowns_centernet", "tree crowns (deepforest), 256 px tiles", "centernet_resnet18", None, _centernet,
         _recipe("tree_crowns", 256, 4, ADAMW), (Metric("box AP50", "bbox_AP50"), Metric("box AP", "bbox_AP")),
         steps=100),
)}
