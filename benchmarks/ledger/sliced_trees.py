"""Box AP50 of a tree-crown detector on the full-size deepforest images: whole image vs sliced.

    OMP_NUM_THREADS=1 python -m benchmarks.ledger.sliced_trees --steps 300 [--checkpoint run/last.safetensors]

The model is the real-data ledger's ``tree_crowns`` case (Faster R-CNN, resnet18 FPN, random init,
SGD on the 256 px training tiles for ``--steps`` steps, one thread). It is scored on each image's
held-out block (the bottom-right block of tiles the training never saw, up to 1280 x 1280 px, the
crowns whose centre lies in it), three ways: the whole block in one forward (at most
``box_detections_per_img`` = 100 detections, the model's default), the whole block with the cap
raised to 1000, and sliced (``--tile`` px tiles, ``--overlap``, merged by NMS and by fusion).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import segzoo
from benchmarks.ledger.cases import CASES
from benchmarks.ledger.run import make_config, train_segzoo
from segzoo.data import build_dataset
from segzoo.data.formats.realdata import TREE_IMAGES, TreeCrownTiles, cuts
from segzoo.slicing import sliced_detect
from segzoo.tasks import get_task


def held_out_blocks(tile: int = 256):
    """``(name, image 3 x h x w float, boxes K x 4)`` of each image's held-out block."""
    data = TreeCrownTiles(split="val", tile_size=tile)
    out = []
    for name, image, boxes in zip(TREE_IMAGES, data.arrays, data.boxes):
        h, w = image.shape[:2]
        ys, xs = cuts(h, tile), cuts(w, tile)
        y0, x0 = ys[(len(ys) - 1) // 2], xs[(len(xs) - 1) // 2]
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        keep = (cx >= x0) & (cy >= y0)
        b = boxes[keep].copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(x0, w) - x0
        b[:, [1, 3]] = b[:, [1, 3]].clip(y0, h) - y0
        im = torch.from_numpy(np.ascontiguousarray(image[y0:, x0:])).permute(2, 0, 1).float() / 255
        out.append((name, im, b))
    return out


def ap50(blocks, dets) -> float:
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tree"}]}
    res = []
    for i, ((_, im, boxes), det) in enumerate(zip(blocks, dets)):
        gt["images"].append({"id": i, "height": im.shape[1], "width": im.shape[2]})
        for b in boxes:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                                      "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                      "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        for b, s in zip(det["boxes"].tolist(), det["scores"].tolist()):
            res.append({"image_id": i, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    if not res:
        return 0.0
    ev = COCOeval(coco, coco.loadRes(res), "bbox")
    ev.params.maxDets = [1, 10, 10000]  # no cap on the count scored: the image holds hundreds of crowns
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="score this model instead of training one")
    p.add_argument("--out", default="/tmp/segzoo-sliced-trees")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.25)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    case = CASES["tree_crowns"]
    if args.checkpoint:
        model = segzoo.load(args.checkpoint)
    else:
        cfg = make_config(case, args.seed, args.steps)
        model, _ = case.build(args.seed)
        train_set = build_dataset(cfg.data, "train", get_task(model.task).target)
        side = train_segzoo(model, train_set, cfg, Path(args.out))
        print(f"trained {args.steps} steps in {side['train_s']} s; run folder {args.out}")
    model.eval()
    blocks = held_out_blocks(args.tile)
    print("held-out blocks:", [(n, tuple(im.shape[1:]), len(b)) for n, im, b in blocks])
    rows = {}
    with torch.inference_mode():
        for label, cap in (("whole image (100 detections, default)", 100), ("whole image (1000 detections)", 1000)):
            model.roi_heads.detections_per_img = cap
            t0 = time.perf_counter()
            dets = [model([im])[0] for _, im, _ in blocks]
            rows[label] = (ap50(blocks, dets), time.perf_counter() - t0)
        model.roi_heads.detections_per_img = 100
        for merge in ("nms", "fuse"):
            t0 = time.perf_counter()
            dets = [sliced_detect(model, im, args.tile, args.overlap, merge=merge, iou=0.5) for _, im, _ in blocks]
            rows[f"sliced {args.tile} px, overlap {args.overlap}, {merge}"] = (ap50(blocks, dets),
                                                                              time.perf_counter() - t0)
    print(json.dumps({k: {"AP50": round(a, 4), "seconds": round(s, 1)} for k, (a, s) in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
