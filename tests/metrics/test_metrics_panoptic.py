"""PQ / SQ / RQ: against torchmetrics' PanopticQuality on the same inputs, and panopticapi's void and
crowd rules on small hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from segzoo.metrics.panoptic import PanopticQuality

NUM_CLASSES, NUM_STUFF = 5, 2  # things 0, 1, 2; stuff 3, 4


def _scene(g: torch.Generator, h: int = 24, w: int = 32, void: bool = True) -> tuple[torch.Tensor, list[dict]]:
    """A random panoptic map: stuff bands (one segment per stuff class) with random thing rectangles on top."""
    seg = torch.zeros(h, w, dtype=torch.int64)
    info = []
    cut = int(torch.randint(4, h - 4, (1,), generator=g))
    for sid, (stuff, rows) in enumerate(((3, slice(0, cut)), (4, slice(cut, h))), start=1):
        seg[rows] = sid
        info.append({"id": sid, "category": stuff})
    for _ in range(int(torch.randint(1, 6, (1,), generator=g))):
        y, x = int(torch.randint(0, h - 6, (1,), generator=g)), int(torch.randint(0, w - 6, (1,), generator=g))
        dh, dw = (int(v) for v in torch.randint(3, 9, (2,), generator=g))
        sid = len(info) + 1
        seg[y:y + dh, x:x + dw] = sid
        info.append({"id": sid, "category": int(torch.randint(0, 3, (1,), generator=g))})
    if void:  # a void stripe
        c = int(torch.randint(0, w - 3, (1,), generator=g))
        seg[:, c:c + 2] = 0
    present = set(torch.unique(seg).tolist())
    return seg, [s for s in info if s["id"] in present]


def _jitter(seg: torch.Tensor, info: list[dict], g: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    """A prediction near the ground truth: segments shifted, some categories swapped, no void pixels."""
    shift = int(torch.randint(-2, 3, (1,), generator=g))
    pred = torch.roll(seg, shifts=shift, dims=1)
    pred = torch.where(pred == 0, 1, pred)  # predictions cover every pixel (torchmetrics' union differs on void)
    out = []
    for s in info:
        cat = s["category"]
        if cat < 3 and float(torch.rand(1, generator=g)) < 0.3:
            cat = (cat + 1) % 3
        out.append({"id": s["id"], "category": cat})
    if not any(s["id"] == 1 for s in out):
        out.append({"id": 1, "category": 3})
    present = set(torch.unique(pred).tolist())
    return pred, [s for s in out if s["id"] in present]


def _torchmetrics_input(seg: torch.Tensor, info: list[dict]) -> torch.Tensor:
    """``H x W x 2`` (category, instance) pairs; void gets a category that is neither thing nor stuff."""
    cat = torch.full_like(seg, NUM_CLASSES)  # unknown category: void for torchmetrics
    for s in info:
        cat[seg == s["id"]] = s["category"]
    return torch.stack([cat, torch.where(seg > 0, seg, 0)], -1)


def test_matches_torchmetrics_on_random_scenes():
    tm = pytest.importorskip("torchmetrics.detection", reason="the cross-check needs torchmetrics")
    g = torch.Generator().manual_seed(0)
    ours = PanopticQuality(NUM_CLASSES, NUM_STUFF)
    things, stuffs = {0, 1, 2}, {3, 4}
    ref = tm.PanopticQuality(things=things, stuffs=stuffs, return_per_class=True, return_sq_and_rq=True)
    preds, targets = [], []
    for _ in range(12):
        gt, gt_info = _scene(g)
        pred, pred_info = _jitter(gt, gt_info, g)
        ours.update([{"segments": pred, "segments_info": pred_info}], [{"segments": gt, "segments_info": gt_info}])
        preds.append(_torchmetrics_input(pred, pred_info))
        targets.append(_torchmetrics_input(gt, gt_info))
    ref.update(torch.stack(preds), torch.stack(targets))
    per_class = ref.compute()  # (C, 3): pq, sq, rq per continuous id (things sorted, then stuff sorted)
    got = ours.compute()
    assert all(int(v.sum()) > 0 for v in (ref.true_positives, ref.false_positives, ref.false_negatives))
    for c in range(NUM_CLASSES):
        seen = (ref.true_positives[c] + ref.false_positives[c] + ref.false_negatives[c]) > 0
        mine = got["per_class"][str(c)]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (int(ref.true_positives[c]), int(ref.false_positives[c]),
                                                        int(ref.false_negatives[c]))
        if seen:
            assert mine["pq"] == pytest.approx(float(per_class[c, 0]), abs=1e-6)  # torchmetrics divides in float32
            assert mine["sq"] == pytest.approx(float(per_class[c, 1]), abs=1e-6)
            assert mine["rq"] == pytest.approx(float(per_class[c, 2]), abs=1e-6)
    overall = tm.PanopticQuality(things=things, stuffs=stuffs, return_sq_and_rq=True)
    overall.update(torch.stack(preds), torch.stack(targets))
    pq, sq, rq = overall.compute().tolist()
    assert (got["pq"], got["sq"], got["rq"]) == pytest.approx((pq, sq, rq), abs=1e-6)
    # things and stuff: torchmetrics restricted to those categories
    for sfx, cats in (("_th", things), ("_st", stuffs)):
        keep = torch.tensor([c in cats for c in range(NUM_CLASSES)])
        seen = (ref.true_positives + ref.false_positives + ref.false_negatives) > 0
        assert got["pq" + sfx] == pytest.approx(float(per_class[keep & seen, 0].mean()), abs=1e-6)
    assert got["num_categories"] == int(seen.sum())


def _pq(stats_input, num_classes=2, num_stuff=1):
    m = PanopticQuality(num_classes, num_stuff)
    pred, target = stats_input
    m.update([pred], [target])
    return m


def test_predicted_void_counts_in_the_union_and_a_mostly_void_prediction_is_no_false_positive():
    gt = torch.zeros(10, 10, dtype=torch.int64)
    gt[:, :5] = 1  # thing, 50 px
    gt[:, 8:] = 0  # void
    pred = torch.zeros_like(gt)
    pred[:6, :5] = 1  # 30 of the 50 px, the rest predicted void: IoU 30 / 50 = 0.6 (torchmetrics: 1.0)
    pred[:, 7:] = 2  # 30 px, 20 of them on void: not a false positive
    m = _pq(({"segments": pred, "segments_info": [{"id": 1, "category": 0}, {"id": 2, "category": 0}]},
             {"segments": gt, "segments_info": [{"id": 1, "category": 0}]}))
    r = m.compute()["per_class"]["0"]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["sq"] == pytest.approx(0.6)
    # the union leaves out predicted pixels that are void in the ground truth
    pred2 = torch.where(gt == 1, 1, 0)
    pred2[:, 8:] = 1  # 20 px of the prediction on void
    m = _pq(({"segments": pred2, "segments_info": [{"id": 1, "category": 0}]},
             {"segments": gt, "segments_info": [{"id": 1, "category": 0}]}))
    assert m.compute()["per_class"]["0"]["sq"] == pytest.approx(1.0)


def test_crowd_is_never_a_false_negative_and_absorbs_predictions_of_its_category():
    gt = torch.zeros(10, 10, dtype=torch.int64)
    gt[:, :5] = 1  # a crowd of category 0
    gt[:, 5:] = 2  # stuff, category 1
    info = [{"id": 1, "category": 0, "iscrowd": 1}, {"id": 2, "category": 1}]
    pred = torch.full_like(gt, 3)
    pred[2:8, 1:4] = 1  # category 0 inside the crowd: ignored
    pred[0:2, 0:5] = 2  # category 1 inside the crowd: a false positive (another category)
    pinfo = [{"id": 1, "category": 0}, {"id": 2, "category": 1}, {"id": 3, "category": 1}]
    m = _pq(({"segments": pred, "segments_info": pinfo}, {"segments": gt, "segments_info": info}))
    r = m.compute()["per_class"]
    assert (r["0"]["tp"], r["0"]["fp"], r["0"]["fn"]) == (0, 0, 0)
    assert (r["1"]["tp"], r["1"]["fp"], r["1"]["fn"]) == (1, 1, 0)
    out = m.compute()
    assert out["num_categories"] == 1 and math.isnan(out["pq_th"])
    # the same ground truth as masks + labels + iscrowd (segzoo's panoptic targets)
    masks = torch.stack([gt == 1, gt == 2])
    m2 = _pq(({"segments": pred, "segments_info": pinfo},
              {"masks": masks, "labels": torch.tensor([0, 1]), "iscrowd": torch.tensor([1, 0])}))
    torch.testing.assert_close(m2.stats, m.stats)


def test_pq_formula_and_things_stuff_split():
    gt = torch.zeros(4, 8, dtype=torch.int64)
    gt[:, :4], gt[:, 4:] = 1, 2
    pred = gt.clone()
    pred[:, 3] = 2  # thing IoU 3/4, stuff IoU 4/5
    info = [{"id": 1, "category": 0}, {"id": 2, "category": 1}]
    out = _pq(({"segments": pred, "segments_info": info}, {"segments": gt, "segments_info": info})).compute()
    assert out["pq_th"] == pytest.approx(0.75) and out["pq_st"] == pytest.approx(0.8)
    assert out["pq"] == pytest.approx((0.75 + 0.8) / 2) and out["rq"] == 1.0


def test_bad_inputs_are_refused():
    seg = torch.ones(4, 4, dtype=torch.int64)
    m = PanopticQuality(2, 1)
    with pytest.raises(ValueError, match="not in segments_info"):
        m.update([{"segments": seg * 2, "segments_info": [{"id": 1, "category": 0}]}],
                 [{"segments": seg, "segments_info": [{"id": 1, "category": 0}]}])
    with pytest.raises(ValueError, match="num_classes=2"):
        m.update([{"segments": seg, "segments_info": [{"id": 1, "category": 5}]}],
                 [{"segments": seg, "segments_info": [{"id": 1, "category": 0}]}])
    with pytest.raises(ValueError, match="overlapping"):
        m.update([{"segments": seg, "segments_info": [{"id": 1, "category": 0}]}],
                 [{"masks": torch.ones(2, 4, 4), "labels": torch.tensor([0, 1])}])
    with pytest.raises(ValueError, match="size"):
        m.update([{"segments": seg[:2], "segments_info": [{"id": 1, "category": 0}]}],
                 [{"segments": seg, "segments_info": [{"id": 1, "category": 0}]}])
