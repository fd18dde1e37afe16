import math

import numpy as np
import pytest
import torch

from segzoo.metrics.semantic import SegmentationMetric, format_table


def _numpy_metrics(pred, target, c, ignore):
    """Direct per-class computation with numpy, independent of the confusion matrix."""
    p, t = pred.ravel(), target.ravel()
    keep = t != ignore
    p, t = p[keep], t[keep]
    iou, dice, acc = [], [], []
    for k in range(c):
        inter = np.sum((p == k) & (t == k))
        union = np.sum((p == k) | (t == k))
        n_t, n_p = np.sum(t == k), np.sum(p == k)
        iou.append(inter / union if union else np.nan)
        dice.append(2 * inter / (n_t + n_p) if n_t + n_p else np.nan)
        acc.append(inter / n_t if n_t else np.nan)
    iou, dice, acc = map(np.array, (iou, dice, acc))
    freq = np.array([np.sum(t == k) for k in range(c)]) / len(t)
    fw = np.nansum(freq * np.nan_to_num(iou))
    return {
        "pixel_acc": np.mean(p == t), "miou": np.nanmean(iou), "mdice": np.nanmean(dice),
        "mean_acc": np.nanmean(acc), "fwiou": fw, "iou": iou, "dice": dice, "acc": acc,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_on_random_predictions(seed):
    g = torch.Generator().manual_seed(seed)
    c = 5
    metric = SegmentationMetric(c, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):  # several updates accumulate
        logits = torch.randn(2, c, 17, 23, generator=g)
        target = torch.randint(0, c - 1, (2, 17, 23), generator=g)  # class 4 never in GT
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        metric.update(logits, target)
        preds.append(logits.argmax(1).numpy())
        targets.append(target.numpy())
    ref = _numpy_metrics(np.concatenate(preds), np.concatenate(targets), c, 255)
    out = metric.compute()
    for key in ("pixel_acc", "miou", "mdice", "mean_acc", "fwiou"):
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key
    for key in ("iou", "dice", "acc"):
        np.testing.assert_allclose(np.array(out[key]), ref[key], atol=1e-12)
    assert math.isnan(out["acc"][4]) and out["iou"][4] == 0.0  # predicted but absent: IoU 0
    assert metric.confusion.dtype == torch.int64 and metric.confusion.shape == (c, c)
    # pixels with target 255 are not counted
    assert int(metric.confusion.sum()) == sum(int((t != 255).sum()) for t in targets)


def test_absent_class_is_nan_and_excluded_from_means():
    metric = SegmentationMetric(3)
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    metric.update(pred, target)
    out = metric.compute()
    assert math.isnan(out["iou"][2]) and math.isnan(out["dice"][2])
    assert out["iou"][:2] == pytest.approx([0.5, 2 / 3])
    assert out["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert out["dice"][:2] == pytest.approx([2 / 3, 0.8])
    assert out["pixel_acc"] == pytest.approx(0.75)
    # rows are ground truth, columns predictions
    assert metric.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_perfect_prediction_and_reset():
    metric = SegmentationMetric(4)
    target = torch.randint(0, 4, (2, 9, 9))
    metric.update(target.clone(), target)
    out = metric.compute()
    assert out["miou"] == 1.0 and out["pixel_acc"] == 1.0 and out["fwiou"] == pytest.approx(1.0)
    metric.reset()
    assert int(metric.confusion.sum()) == 0
    assert math.isnan(metric.compute()["miou"])


def test_reduce_is_noop_without_distributed():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    before = metric.confusion.clone()
    metric.reduce()
    assert torch.equal(metric.confusion, before)


def test_user_errors():
    metric = SegmentationMetric(2)
    with pytest.raises(ValueError, match="num_classes=2"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="does not match"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        metric.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4))


def test_format_table_lists_classes():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    text = format_table(metric.compute(), ["bg", "cat"])
    assert "cat" in text and "100.00" in text and "miou" in text
