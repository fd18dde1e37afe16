import builtins
import math

import pytest
import torch

from segzoo.metrics import coco as coco_mod
from segzoo.metrics.coco import CocoEvaluator


def _box_mask(boxes, h, w):
    masks = torch.zeros(len(boxes), h, w)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = 1.0
    return masks


def _targets():
    # two images: small, medium and large objects of three classes
    t0 = torch.tensor([[2.0, 3.0, 12.0, 13.0], [20.0, 20.0, 60.0, 60.0]])
    t1 = torch.tensor([[0.0, 0.0, 120.0, 100.0], [50.0, 10.0, 70.0, 30.0]])
    return [
        {"boxes": t0, "labels": torch.tensor([0, 1]), "masks": _box_mask(t0, 128, 128)},
        {"boxes": t1, "labels": torch.tensor([2, 0]), "masks": _box_mask(t1, 128, 128)},
    ]


def test_perfect_predictions_give_ap_one():
    targets = _targets()
    preds = [
        {"boxes": t["boxes"].clone(), "scores": torch.tensor([0.9, 0.8]), "labels": t["labels"].clone(),
         "masks": t["masks"] * 0.9}
        for t in targets
    ]
    ev = CocoEvaluator(3, iou_types=("bbox", "segm"), class_names=["a", "b", "c"])
    ev.update(preds[:1], targets[:1])
    ev.update(preds[1:], targets[1:])
    out = ev.compute()
    for t in ("bbox", "segm"):
        for s in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert out[f"{t}_{s}"] == pytest.approx(1.0), (t, s)
        assert out[f"{t}_per_class"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert "Average Precision" in ev.summary


def test_shifted_box_gives_expected_ap():
    # GT 10x10, prediction shifted 2 px: IoU = 80 / 120 = 0.667 -> matched at thresholds
    # 0.50, 0.55, 0.60, 0.65 (4 of 10) -> AP = 0.4, AP50 = 1, AP75 = 0
    ev = CocoEvaluator(1)
    ev.update(
        [{"boxes": torch.tensor([[2.0, 0.0, 12.0, 10.0]]), "scores": torch.tensor([0.5]),
          "labels": torch.tensor([0])}],
        [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}],
    )
    out = ev.compute()
    assert out["bbox_AP"] == pytest.approx(0.4)
    assert out["bbox_AP50"] == pytest.approx(1.0)
    assert out["bbox_AP75"] == pytest.approx(0.0)
    assert out["bbox_APs"] == pytest.approx(0.4)
    assert math.isnan(out["bbox_APm"])  # no medium ground truth: COCOeval's -1 becomes NaN


def test_missed_class_gives_zero_class_ap():
    # class 0 found exactly (AP 1), the class-1 object missed (AP 0) -> mean 0.5
    ev = CocoEvaluator(2, category_ids=[7, 9])
    gt = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]]), "labels": torch.tensor([0, 1])}
    pred = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    ev.update([pred], [gt])
    out = ev.compute()
    assert out["bbox_per_class"] == {"7": pytest.approx(1.0), "9": pytest.approx(0.0)}
    assert out["bbox_AP"] == pytest.approx(0.5)


def test_category_ids_and_images_without_detections():
    ev = CocoEvaluator(2, category_ids=[3, 5])
    gt = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([1]), "image_id": 42}
    ev.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
              [gt])
    out = ev.compute()
    assert out["bbox_AP"] == pytest.approx(0.0)
    assert ev.gt_anns[0]["category_id"] == 5 and ev.images[0]["id"] == 42


def test_user_errors():
    ev = CocoEvaluator(2)
    with pytest.raises(ValueError, match="0-based"):
        ev.update([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([2])}],
                  [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(2, iou_types=("keypoints",))
    with pytest.raises(ValueError, match="category_ids"):
        CocoEvaluator(2, category_ids=[1])
    with pytest.raises(ValueError, match="before any update"):
        CocoEvaluator(2).compute()


def test_missing_pycocotools_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pycocotools"):
            raise ImportError("no pycocotools")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install segzoo\[coco\]"):
        coco_mod.CocoEvaluator(2)


def test_matches_pycocotools_on_a_json_dataset(tmp_path):
    """The in-memory path gives COCOeval's numbers for the same json ground truth and results."""
    import contextlib
    import io
    import json

    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from segzoo.data import CocoInstances
    from segzoo.data.synthetic.shapes import generate

    root = generate(tmp_path / "shapes", num_train=1, num_val=6, size=64, seed=3) / "val"
    ds = CocoInstances(root / "images", root / "instances.json")
    g = torch.Generator().manual_seed(0)
    ev = CocoEvaluator(ds.num_classes, ("bbox", "segm"), category_ids=ds.cat_ids, class_names=ds.classes)
    results = {"bbox": [], "segm": []}
    for i in range(len(ds)):
        _, t = ds[i]
        t = {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        t["area"] = torch.tensor([a["area"] for a in ds.annotations(i)], dtype=torch.float64)
        k = len(t["boxes"])
        # jittered true boxes with shifted masks, some wrong labels, plus random false positives
        boxes = torch.cat([t["boxes"] + torch.randn(k, 4, generator=g) * 2, torch.rand(2, 4, generator=g) * 30])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = torch.cat([t["labels"], torch.randint(0, 3, (2,), generator=g)])
        labels[torch.rand(len(labels), generator=g) < 0.2] = 0
        scores = torch.rand(len(labels), generator=g)
        masks = torch.cat([t["masks"].float().roll(1, -1), (torch.rand(2, 64, 64, generator=g) > 0.7).float()])
        ev.update([{"boxes": boxes, "scores": scores, "labels": labels, "masks": masks * 0.8}], [t])
        image_id = int(t["image_id"])
        rles = mask_utils.encode(np.asfortranarray(masks.numpy().transpose(1, 2, 0).astype(np.uint8)))
        for j in range(len(labels)):
            x1, y1, x2, y2 = boxes[j].tolist()
            common = {"image_id": image_id, "category_id": ds.cat_ids[int(labels[j])], "score": float(scores[j])}
            results["bbox"].append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            results["segm"].append({**common, "segmentation": {**rles[j], "counts": rles[j]["counts"].decode()}})
    ours = ev.compute()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "instances.json"))
        for iou_type in ("bbox", "segm"):
            res_file = tmp_path / f"{iou_type}.json"
            res_file.write_text(json.dumps(results[iou_type]))
            ref = COCOeval(gt, gt.loadRes(str(res_file)), iouType=iou_type)
            ref.evaluate()
            ref.accumulate()
            ref.summarize()
            for name, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ref.stats[:6]):
                got = ours[f"{iou_type}_{name}"]
                if v < 0:
                    assert math.isnan(got)
                else:
                    assert got == pytest.approx(v, abs=1e-9), (iou_type, name)
    assert 0.05 < ours["bbox_AP50"] < 0.95  # a non-trivial case
