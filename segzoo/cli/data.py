"""``segzoo data check CONFIG`` and ``segzoo data convert SRC DST --to FORMAT``."""

from __future__ import annotations

import argparse

from segzoo.cli.common import overrides_argument, pixel_limit_argument

CHECK_HELP = "check a config's data"
CHECK_DESCRIPTION = """Check a config's data before training (classes, mask values, 0/255 masks,
empty images, boxes, files).

    segzoo data check configs/quickstart.yaml [key.sub=value ...]

Exits with status 1 when the data has errors (training would refuse it)."""


CONVERT_HELP = "convert a dataset to coco, mask_folder or yolo"
CONVERT_DESCRIPTION = """Convert a dataset (VOC, YOLO, LabelMe, CVAT, COCO,
Cityscapes, ADE20K...) to coco, mask_folder or yolo.

    segzoo data convert SRC DST --to coco [--from auto] [--split train]"""


def check_arguments(p: argparse.ArgumentParser) -> None:
    pixel_limit_argument(p)
    p.add_argument("config", help="YAML config file (see configs/)")
    overrides_argument(p)


def check_run(args: argparse.Namespace) -> int:
    from segzoo.config import load_config
    from segzoo.engine.build import build_model, check_data

    cfg = load_config(args.config, args.overrides)
    model = build_model(cfg)
    reports = check_data(cfg, model.spec.num_classes, model)
    return 0 if all(r.ok for r in reports) else 1


# the choices of `segzoo data convert`, written out so that --help imports no reader (a test compares them
# with segzoo.data.convert.TARGETS / READS and segzoo.data.formats.detect.FORMATS)
TARGETS = ("coco", "mask_folder", "yolo", "labelme", "cvat")
SOURCES = ("auto", "coco", "voc", "yolo", "labelme", "cvat", "cityscapes", "ade20k", "mask_folder")  # not panoptic
READS = ("auto", "instance", "detection")


def convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source dataset folder (or COCO json / CVAT xml / YOLO data.yaml)")
    p.add_argument("dst", help="new destination folder")
    p.add_argument("--to", required=True, choices=TARGETS, help="format to write")
    p.add_argument("--from", dest="source_format", default="auto", choices=SOURCES,
                   help="source format (default: recognised from the files)")
    p.add_argument("--split", dest="splits", action="append", help="convert only this split (repeatable)")
    p.add_argument("--task", default="auto", choices=READS,
                   help="annotations to read for coco/yolo: shapes (instance) or boxes (detection)")
    p.add_argument("--simplify", type=float, default=0.0, help="simplify traced YOLO polygons by this many pixels")


def convert_run(args: argparse.Namespace) -> int:
    from segzoo.data.convert import run

    return run(args)
