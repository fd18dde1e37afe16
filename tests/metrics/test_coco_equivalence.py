"""segzoo's COCO AP equals pycocotools' COCOeval on the same json and the same detections.

The json has what real exports have: non-contiguous category ids, polygons, compressed and
uncompressed RLE, crowd regions (one image with nothing else, one with no annotation at all), and
``area`` values that are not the box areas (a triangle is small by its area, medium by its box).
Detections go through ``segzoo.engine.evaluate`` on the dataset ``segzoo eval`` builds.
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from segzoo.data import build_dataset  # noqa: E402
from segzoo.data.targets import BOXES
from segzoo.engine import evaluate  # noqa: E402
from segzoo.metrics.coco import STAT_NAMES  # noqa: E402
from segzoo.tasks import get_task
from tests.data_layouts import data_config

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "bird"}]
SIZES = {1: (120, 160), 2: (128, 176), 3: (160, 192), 4: (96, 112)}  # image id -> (height, width)


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _shoelace(poly: list[float]) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def write_coco(root) -> tuple:
    """Images and a COCO json (see the module docstring); returns (images folder, json path)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []

    def add(image_id, cat, segm, crowd=0, area=None, bbox=None):
        h, w = SIZES[image_id]
        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segm, h, w)) if isinstance(segm, list)
                              else mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list)
                              else {**segm, "counts": segm["counts"].encode()})
        anns.append({"id": 100 + len(anns), "image_id": image_id, "category_id": cat, "segmentation": segm,
                     "iscrowd": crowd, "bbox": bbox or _box(m), "area": float(m.sum()) if area is None else area})

    for image_id, (h, w) in SIZES.items():
        name = f"img{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    tri = [10.0, 10.0, 50.0, 10.0, 10.0, 50.0]  # box 40 x 40 = 1600 (medium); area 800 (small)
    add(1, 3, [tri], area=_shoelace(tri))
    sq = [60.0, 20.0, 100.0, 20.0, 100.0, 60.0, 60.0, 60.0]
    add(1, 7, [sq], area=_shoelace(sq))
    add(1, 3, [[120.0, 5.0, 126.0, 5.0, 126.0, 11.0, 120.0, 11.0]])  # small
    crowd = np.zeros(SIZES[1], bool)
    crowd[70:110, 100:150] = True
    add(1, 12, _rle(crowd, compressed=False), crowd=1)
    big = [10.0, 10.0, 150.0, 10.0, 150.0, 115.0, 10.0, 115.0]  # large
    add(2, 7, [big, [160.0, 100.0, 170.0, 100.0, 170.0, 120.0]], area=_shoelace(big) + 100.0)  # two parts
    yy, xx = np.mgrid[:128, :176]
    ellipse = ((yy - 64) / 12.0) ** 2 + ((xx - 60) / 30.0) ** 2 <= 1  # medium, compressed RLE
    add(2, 12, _rle(ellipse, compressed=True))
    crowd2 = np.zeros(SIZES[2], bool)
    crowd2[90:125, 120:170] = True
    add(2, 3, _rle(crowd2, compressed=False), crowd=1)
    crowd3 = np.zeros(SIZES[3], bool)
    crowd3[20:150, 30:180] = True
    add(3, 7, _rle(crowd3, compressed=False), crowd=1)  # an image whose only annotation is a crowd region
    doc = {"images": images, "annotations": anns, "categories": CATS}
    path = root / "instances.json"
    path.write_text(json.dumps(doc))
    return root / "images", path


def make_detections(gt: COCO, with_masks: bool, seed: int = 0) -> dict[int, dict]:
    """Per image: jittered true objects (some with a wrong label), detections on the crowd regions and
    random false positives, with masks when asked."""
    g = torch.Generator().manual_seed(seed)
    label_of = {c["id"]: k for k, c in enumerate(CATS)}
    out = {}
    for image_id, (h, w) in SIZES.items():
        boxes, labels, masks = [], [], []
        for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=None)):
            x, y, bw, bh = a["bbox"]
            m = torch.from_numpy(gt.annToMask(a)).float()
            for _ in range(2 if a["iscrowd"] else 1):
                jitter = torch.randn(4, generator=g) * (6 if a["iscrowd"] else 2)
                x1, y1 = x + float(jitter[0]), y + float(jitter[1])
                x2, y2 = x1 + max(bw * 0.6, bw + float(jitter[2])), y1 + max(bh * 0.6, bh + float(jitter[3]))
                boxes.append([x1, y1, x2, y2])
                wrong = float(torch.rand(1, generator=g)) < 0.15
                labels.append((label_of[a["category_id"]] + wrong) % 3)
                masks.append(m.roll(int(torch.randint(0, 3, (1,), generator=g)), 1))
        for _ in range(3):
            x1, y1 = float(torch.rand(1, generator=g)) * w * 0.7, float(torch.rand(1, generator=g)) * h * 0.7
            s = 4 + float(torch.rand(1, generator=g)) * 40
            boxes.append([x1, y1, min(x1 + s, w), min(y1 + s, h)])
            labels.append(int(torch.randint(0, 3, (1,), generator=g)))
            fp = torch.zeros(h, w)
            fp[int(y1): int(y1 + s), int(x1): int(x1 + s)] = 1
            masks.append(fp)
        det = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
               "scores": torch.rand(len(labels), generator=g)}
        if with_masks:
            det["masks"] = torch.stack(masks) * 0.8  # probabilities: foreground where > 0.5
        out[image_id] = det
    return out


def results_json(dets: dict[int, dict], iou_type: str, cat_ids: list[int]) -> list[dict]:
    """The detections as a COCO results file (what a user hands to pycocotools)."""
    res = []
    for image_id, d in dets.items():
        for j in range(len(d["labels"])):
            r = {"image_id": image_id, "category_id": cat_ids[int(d["labels"][j])], "score": float(d["scores"][j])}
            if iou_type == "bbox":
                x1, y1, x2, y2 = (float(v) for v in d["boxes"][j])
                r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                rle = mask_utils.encode(np.asfortranarray((d["masks"][j] > 0.5).numpy().astype(np.uint8)))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            res.append(r)
    return res


def cocoeval_stats(ann_file, results: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


class Replay(nn.Module):
    """A stand-in detection model that returns fixed detections, found by image size."""

    def __init__(self, task: str, num_classes: int, detections: dict[tuple[int, int], dict]) -> None:
        super().__init__()
        self.task, self.num_classes, self.detections = task, num_classes, detections
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return [{k: v.clone() for k, v in self.detections[tuple(im.shape[-2:])].items()} for im in images]


def assert_same(ours: dict, ref: np.ndarray, iou_type: str) -> None:
    for name, v in zip(STAT_NAMES, ref):
        got = ours[f"{iou_type}_{name}"]
        if v < 0:
            assert math.isnan(got), (iou_type, name, got)
        else:
            assert got == pytest.approx(float(v), abs=1e-12), (iou_type, name, got, float(v))


@pytest.mark.parametrize("task", ["instance", "detection"])
def test_evaluate_on_coco_json_equals_pycocotools(tmp_path, task):
    images, ann_file = write_coco(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    dets = make_detections(gt, with_masks=task == "instance")
    data_cfg = {"type": "coco", "val": {"images": str(images), "annotations": str(ann_file)}}
    data = build_dataset(data_config(data_cfg), "val", get_task(task).target, train=False)  # what `segzoo eval` builds
    model = Replay(task, 3, {SIZES[i]: d for i, d in dets.items()})
    result = evaluate(model, data, batch_size=2, curves=True)
    ours = result["metrics"]
    cat_ids = [c["id"] for c in CATS]
    for iou_type in ("bbox", "segm") if task == "instance" else ("bbox",):
        ref = cocoeval_stats(ann_file, results_json(dets, iou_type, cat_ids), iou_type)
        assert_same(ours, ref, iou_type)
        assert all(0 < v < 1 for v in ref[3:6]), ref  # small, medium and large objects all scored
    assert result["class_names"] == ["cat", "dog", "bird"]
    assert set(ours["bbox_per_class"]) == {"cat", "dog", "bird"}


def test_format_reader_equals_pycocotools_on_its_coco_conversion(tmp_path):
    """A format reader's ground truth (crowd regions, shape areas) is what its COCO conversion holds."""
    from segzoo.data import CVAT
    from segzoo.data.convert import convert
    from tests.data_layouts import write_cvat

    src = write_cvat(tmp_path / "cvat")
    convert(src, tmp_path / "coco", "coco", read=BOXES)
    ann_file = next((tmp_path / "coco" / "annotations").glob("*.json"))
    doc = json.loads(ann_file.read_text())
    assert any(a["iscrowd"] for a in doc["annotations"])
    ds = CVAT(src, target=BOXES)
    sizes = {tuple(ds.image_hw(i)) for i in range(len(ds))}
    assert len(sizes) == 1
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in doc["annotations"] if a["image_id"] == 1])
    boxes = torch.cat([boxes + torch.randn(boxes.shape, generator=g), boxes[-2:] + 3])
    det = {"boxes": boxes.float(), "labels": torch.randint(0, 3, (len(boxes),), generator=g),
           "scores": torch.rand(len(boxes), generator=g)}
    ours = evaluate(Replay("detection", 3, {sizes.pop(): det}), ds)["metrics"]
    results = results_json({im["id"]: det for im in doc["images"]}, "bbox", [c["id"] for c in doc["categories"]])
    assert_same(ours, cocoeval_stats(ann_file, results, "bbox"), "bbox")
