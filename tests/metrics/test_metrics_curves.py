import math

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.metrics.curves import (
    DetectionPRCurve,
    PRCurve,
    average_precision,
    best_f1,
    plot_confusion_matrix,
    plot_pr_curves,
    pr_curve,
)


def test_pr_curve_known_values():
    p, r, t = pr_curve(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0]))
    assert p.tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([0.5, 0.5, 1, 1])
    assert t.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert average_precision(p, r) == pytest.approx(0.5 + 0.5 * 2 / 3)
    f1, thr = best_f1(p, r, t)
    assert f1 == pytest.approx(0.8) and thr == pytest.approx(0.7)


def test_pr_curve_matches_brute_force_with_ties():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 15, (200,), generator=g).double() / 14  # many ties
    pos = torch.rand(200, generator=g) < 0.3
    p, r, t = pr_curve(scores, pos)
    for pi, ri, ti in zip(p.tolist(), r.tolist(), t.tolist()):
        sel = scores >= ti
        assert pi == pytest.approx(float((pos & sel).sum() / sel.sum()))
        assert ri == pytest.approx(float((pos & sel).sum() / pos.sum()))


def test_binned_semantic_curve_matches_exact_curve():
    g = torch.Generator().manual_seed(0)
    c, bins = 3, 21
    probs = torch.randint(0, bins, (2, c, 12, 10), generator=g).float() / (bins - 1)  # on the grid
    target = torch.randint(0, c, (2, 12, 10), generator=g)
    target[:, :2] = 255
    curve = PRCurve(c, num_bins=bins)
    curve.update(probs[:1], target[:1])
    curve.update(probs[1:], target[1:])
    out = curve.compute()
    keep = target != 255
    aps = []
    for k in range(c):
        p, r, t = pr_curve(probs[:, k][keep], target[keep] == k)
        ap = average_precision(p, r)
        aps.append(ap)
        assert out["per_class"][k]["ap"] == pytest.approx(ap, abs=1e-9)
        assert out["per_class"][k]["num_positives"] == int((target[keep] == k).sum())
        assert out["per_class"][k]["best_f1"] == pytest.approx(best_f1(p, r, t)[0], abs=1e-9)
    assert out["map"] == pytest.approx(sum(aps) / c)


def test_binary_map_and_logits():
    target = torch.tensor([[[0, 1, 1, 0]]])
    probs = torch.tensor([[[0.1, 0.9, 0.8, 0.2]]])
    curve = PRCurve(1, num_bins=11)
    curve.update(probs, target)
    res = curve.compute()["per_class"][0]
    assert res["ap"] == pytest.approx(1.0) and res["best_f1"] == pytest.approx(1.0)
    assert 0.2 < res["best_threshold"] <= 0.8
    with pytest.raises(ValueError, match="logits=True"):
        curve.update(probs * 5, target)
    curve.update(torch.logit(probs)[:, None], target, logits=True)
    assert curve.compute()["per_class"][0]["ap"] == pytest.approx(1.0)


def test_detection_curve_interpolated_ap():
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), "labels": torch.tensor([0, 0])}
    pred = {
        "boxes": torch.tensor([[50.0, 50, 60, 60], [0.0, 0, 10, 10], [0.0, 0, 10, 10], [21.0, 20, 31, 30]]),
        "scores": torch.tensor([0.95, 0.9, 0.85, 0.7]),
        "labels": torch.tensor([0, 0, 0, 0]),
    }
    curve = DetectionPRCurve(2)
    curve.update([pred], [gt])
    out = curve.compute()
    res = out["per_class"][0]
    # FP, TP, duplicate FP, TP: precision 0, 1/2, 1/3, 1/2 at recall 0, .5, .5, 1
    assert res["precision"] == pytest.approx([0, 0.5, 1 / 3, 0.5])
    assert res["recall"] == pytest.approx([0, 0.5, 0.5, 1])
    assert res["ap"] == pytest.approx(0.5)  # envelope 0.5 everywhere
    assert math.isnan(out["per_class"][1]["ap"]) and out["map"] == pytest.approx(0.5)
    # IoU of the last box is 9/11 = 0.82: a stricter threshold drops it
    strict = DetectionPRCurve(2, iou_thresh=0.9)
    strict.update([pred], [gt])
    assert strict.compute()["per_class"][0]["recall"][-1] == pytest.approx(0.5)


def test_plots_write_pngs(tmp_path):
    curve = PRCurve(2, num_bins=11)
    probs = torch.rand(1, 2, 8, 8).softmax(1)
    curve.update(probs, torch.randint(0, 2, (1, 8, 8)))
    plot_pr_curves(curve.compute(), tmp_path / "pr.png", ["bg", "fg"])
    plot_confusion_matrix(torch.tensor([[5, 1], [2, 7]]), tmp_path / "cm.png", ["bg", "fg"])
    for name in ("pr.png", "cm.png"):
        arr = np.array(Image.open(tmp_path / name))
        assert arr.ndim == 3 and arr.shape[0] > 100 and arr.std() > 0


def test_interpolated_area_uses_precision_envelope():
    p, r = torch.tensor([0.0, 0.5, 2 / 3]), torch.tensor([0.0, 0.5, 1.0])
    assert average_precision(p, r) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(p, r, interpolate=True) == pytest.approx(2 / 3)


def test_detection_curve_ignores_crowd_regions():
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 60, 60]]), "labels": torch.tensor([0, 0]),
          "iscrowd": torch.tensor([0, 1])}
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 60, 60]]), "scores": torch.tensor([0.5, 0.9]),
            "labels": torch.tensor([0, 0])}
    curve = DetectionPRCurve(1)
    curve.update([pred], [gt])
    res = curve.compute()["per_class"][0]
    assert res["num_positives"] == 1 and res["precision"] == [1.0] and res["ap"] == pytest.approx(1.0)


def test_binned_curve_has_no_point_where_nothing_is_predicted():
    """Thresholds above every score predict nothing: no (recall 0, precision 0) point starts the curve."""
    p = torch.tensor([[[0.8, 0.3], [0.6, 0.1]]])
    curve = PRCurve(2, num_bins=11)
    curve.update(torch.stack([1 - p, p], 1), torch.tensor([[[1, 0], [1, 0]]]))
    res = curve.compute()["per_class"][1]
    assert res["thresholds"][0] == pytest.approx(0.8)  # the highest score, not 1.0
    assert (res["recall"][0], res["precision"][0]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert all(p > 0 for p in res["precision"]) and res["ap"] == pytest.approx(1.0)
    assert len(res["precision"]) == len(res["recall"]) == len(res["thresholds"])


def test_pr_legend_is_beside_the_curves(tmp_path, monkeypatch):
    """The legend never covers the curves: it sits right of the axes."""
    import matplotlib.figure

    saved = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    curve = PRCurve(3, num_bins=11)
    probs = torch.softmax(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), 1)
    curve.update(probs, torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1)))
    plot_pr_curves(curve.compute(), tmp_path / "pr.png", ["background", "cat", "dog"])
    ax = saved[0].axes[0]
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
