"""Every published recipe (configs/recipes/*.yaml) trains two steps and evaluates once on a tiny
dataset written in its benchmark's layout (Cityscapes, VOC + aug list, COCO), through the same
``train_from_config`` as ``segzoo train``.

The recipes run as they are (model family, loss options, optimizer, schedule, augmentation
pipeline, evaluation protocol) except for what a 40 x 48 image and 2 CPU cores need: sizes
(crops, reference sizes, resize lengths) scaled down, two images per batch, no pretrained
download (``backbone_weights=null``), no worker processes, one evaluation at the end. Models too
big for a 2-core test are shrunk by the overrides in :data:`SHRINK` (and only those): HRNetV2-W48
(+ OCR) runs at width 18 with one module per stage, the R-CNNs and mmsegmentation's R-50-D8 models
on a ResNet-18 of the same kind; the W18-Small and CenterNet recipes run their own models.
"""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from segzoo.config import load_config
from segzoo.engine.run import train_from_config
from tests.data_layouts import write_ade20k, write_cityscapes, write_coco, write_voc

RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs" / "recipes").glob("*.yaml"))
COMMON = ["train.max_steps=2", "data.batch_size=2", "data.val_batch_size=1", "data.num_workers=0",
          "model.backbone_weights=null", "train.device=cpu", "train.amp=off", "train.progress=false",
          "train.tensorboard=false", "eval.every=0", "eval.num_pictures=0"]
# models too big for two training steps on 2 CPU cores, shrunk within their family (by model name)
_HRNET_SMALL = ["model.width=18", "model.stage_modules=[1, 1, 1]"]
_R18 = ["model.backbone=resnet18"]
SHRINK = {
    "hrnet_w48": _HRNET_SMALL,
    "hrnet_w48_ocr": [*_HRNET_SMALL, "model.mid_channels=64", "model.key_channels=32"],
    "maskrcnn_resnet50_fpn": _R18, "fasterrcnn_resnet50_fpn": _R18,
    "fcn_resnet50": ["model.backbone=resnet18d"], "pspnet_resnet50": ["model.backbone=resnet18d"],  # V1c-like stem
    "deeplabv3_resnet50": ["model.backbone=resnet18d"], "deeplabv3plus_resnet50": ["model.backbone=resnet18d"],
    "upernet_convnext_tiny": ["model.backbone=convnext_atto", "model.channels=64", "model.aux_channels=32"],
    "mask2former_resnet50": [*_R18, "model.encoder_layers=1", "model.decoder_layers=2", "model.num_queries=10",
                             "model.num_points=256"],
}


def _layout(kind: str, tmp: Path) -> list[str]:
    """Write the tiny dataset of ``data.type`` and return the overrides that point the recipe at it."""
    if kind == "cityscapes":
        root = write_cityscapes(tmp / "cityscapes", frames=2)  # 2 images: BatchNorm on pooled maps needs 2
        return [f"data.train.root={root}", f"data.val.root={root}"]
    if kind == "voc":
        voc = write_voc(tmp / "voc")
        ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text()
        (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(ids)  # the augmented list
        return [f"data.train.root={voc.parent}", f"data.val.root={voc.parent}",
                f"data.train.sbd_root={tmp / 'no_sbd'}"]
    if kind == "ade20k":
        ade = write_ade20k(tmp / "ade20k")
        for folder in ("images", "annotations"):  # 2 training images: BatchNorm on pooled maps needs 2
            for src in (ade / folder / "training").iterdir():
                shutil.copy(src, src.with_name(src.name.replace("00000001", "00000002")))
        return [f"data.train.root={ade}", f"data.val.root={ade}"]
    if kind == "coco":
        root = write_coco(tmp / "coco")
        return [f"data.train.images={root / 'train2017'}",
                f"data.train.annotations={root / 'annotations' / 'instances_train2017.json'}",
                f"data.val.images={root / 'val2017'}",
                f"data.val.annotations={root / 'annotations' / 'instances_val2017.json'}"]
    if kind == "coco_panoptic":  # the panoptic Shapes files are COCO-panoptic files (6 categories, 3 stuff)
        from segzoo.data import ShapesPanoptic

        ShapesPanoptic(tmp / "coco_panoptic", "train", num_train=2, num_val=1, size=64)
        return [f"data.{s}.{k}={tmp / 'coco_panoptic' / s / v}" for s in ("train", "val")
                for k, v in (("images", "images"), ("annotations", "panoptic.json"))] + \
            ["model.num_classes=6", "model.num_stuff=3"]
    raise AssertionError(f"no tiny layout for data.type {kind}")


def _small_sizes(cfg) -> list[str]:
    """The recipe's sizes scaled to a 40 x 48 image (the pipeline itself is unchanged)."""
    aug, ev = cfg.data.augment, cfg.eval
    out = []
    if aug.affine:
        out.append("data.augment.size=64")
    elif aug.resize_short is not None:
        out += ["data.augment.resize_short=[32, 40]" if isinstance(aug.resize_short, tuple) and
                len(aug.resize_short) > 1 else "data.augment.resize_short=40", "data.augment.max_size=64"]
    else:
        out.append("data.augment.size=[32, 40]")
        if aug.crop is not None:  # otherwise the crop is the size (semantic), or there is none (panoptic)
            out.append("data.augment.crop=[32, 40]")
        if aug.base_size is not None:
            out.append("data.augment.base_size=[40, 48]" if isinstance(aug.base_size, tuple) else
                       "data.augment.base_size=48")
    if ev.resize is not None:
        out.append("eval.resize=[40, 48]")
    if ev.crop is not None:
        out.append("eval.crop=[32, 32]")
    return out


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_two_steps_and_evaluates(path, tmp_path):
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "Source:" in header, f"{path.name} must name its source (paper + official config) in its header"
    assert re.search(r"\d+\.\d+ (mIoU|box AP|PQ)", header), f"{path.name} must state the number it should reach"
    cfg = load_config(path)
    shrink = SHRINK.get(cfg.model["name"], [])
    cfg = load_config(path, [*COMMON, *_layout(cfg.data.type, tmp_path), *_small_sizes(cfg), *shrink])
    metrics = train_from_config(cfg, tmp_path / "run")
    assert metrics["step"] == 2 and metrics["total_steps"] == 2
    final = metrics["final"]
    assert math.isfinite(final[metrics["metric"]]) or final[metrics["metric"]] == -1  # COCO AP is -1 without GT
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if r["type"] == "train"]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)
    assert sum(r["type"] == "eval" for r in logs) == 1
