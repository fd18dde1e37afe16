"""Per-class IoU, Dice and AP over thresholds of sigmoid outputs, against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from segzoo.metrics.multilabel import SigmoidMetric, best_threshold
from segzoo.tasks.label_modes import BinaryMetric


def _probs_and_targets():
    # class 0: four labelled pixels; class 1: one pixel unlabelled (255)
    probs = torch.tensor([[[[0.9, 0.8], [0.3, 0.1]], [[0.7, 0.2], [0.6, 0.4]]]])  # 1 x 2 x 2 x 2
    targets = torch.tensor([[[[1, 0], [1, 0]], [[1, 255], [0, 1]]]], dtype=torch.uint8)
    return probs, targets


def test_per_class_counts_at_the_threshold_match_a_hand_computation():
    probs, targets = _probs_and_targets()
    m = SigmoidMetric(2, thresholds=0.5)
    m.update(probs, targets)
    r = m.compute()
    # class 0 at 0.5: predicted {0.9, 0.8}; positives {0.9, 0.3}: TP 1, FP 1, FN 1
    # class 1 at 0.5 (pixel 0.2 unlabelled): predicted {0.7, 0.6}; positives {0.7, 0.4}: TP 1, FP 1, FN 1
    assert r["iou"] == pytest.approx([1 / 3, 1 / 3]) and r["dice"] == pytest.approx([0.5, 0.5])
    assert r["precision"] == pytest.approx([0.5, 0.5]) and r["recall"] == pytest.approx([0.5, 0.5])
    assert r["miou"] == pytest.approx(1 / 3) and r["mdice"] == pytest.approx(0.5)
    # AP, step sum over decreasing thresholds: class 0 ranks 0.9+ 0.8- 0.3+ 0.1-: 0.5 * 1 + 0.5 * 2/3
    # class 1 ranks 0.7+ 0.6- 0.4+: 0.5 * 1 + 0.5 * 2/3
    assert r["ap"] == pytest.approx([0.5 + 1 / 3, 0.5 + 1 / 3], abs=1e-9)
    assert r["map"] == pytest.approx(0.5 + 1 / 3, abs=1e-9)
    # best F1: class 0 at threshold 0.3 (P 2/3, R 1) gives 0.8; class 1 at 0.4 gives 0.8 too
    assert r["best_f1"] == pytest.approx(0.8)
    assert r["f1_threshold"] == pytest.approx([0.3, 0.4], abs=1e-3)
    assert best_threshold(r, 1) == pytest.approx(0.4, abs=1e-3)


def test_per_class_thresholds_and_accumulation_over_batches():
    probs, targets = _probs_and_targets()
    once = SigmoidMetric(2, thresholds=[0.25, 0.65])
    once.update(torch.cat([probs, probs]), torch.cat([targets, targets]))
    twice = SigmoidMetric(2, thresholds=[0.25, 0.65])
    twice.update(probs, targets)
    twice.update(probs, targets)
    assert once.compute() == twice.compute()
    r = once.compute()
    # class 0 at 0.25: predicted {0.9, 0.8, 0.3}: TP 2, FP 1, FN 0 -> IoU 2/3; class 1 at 0.65: {0.7}: 1, 0, 1
    assert r["iou"] == pytest.approx([2 / 3, 1 / 2])


def test_a_class_absent_everywhere_is_left_out_of_the_means():
    m = SigmoidMetric(2)
    m.update(torch.tensor([[[[0.9]], [[0.1]]]]), torch.tensor([[[[1]], [[0]]]], dtype=torch.uint8))
    r = m.compute()
    assert r["iou"][0] == 1.0 and math.isnan(r["iou"][1]) and math.isnan(r["ap"][1]) and r["miou"] == 1.0
    assert math.isnan(r["f1_threshold"][1]) and best_threshold(r, 1) is None
    with pytest.raises(ValueError, match="N x 2 x H x W"):
        m.update(torch.rand(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="probabilities in"):
        SigmoidMetric(2, thresholds=[0.5, 1.0])


def test_the_binary_metric_is_two_labels_at_the_threshold_with_the_foreground_curve():
    fg = torch.tensor([[[0.9, 0.8], [0.3, 0.1]]])  # 1 x H x W
    target = torch.tensor([[1, 0], [1, 255]])
    m = BinaryMetric(threshold=0.5, curves=True)
    m.update([(0, torch.zeros(3, 2, 2), target)], fg[:, None])
    r = m.compute()
    # at 0.5: predicted fg {0.9, 0.8}; the 0.1 pixel is unlabelled: confusion [[bg->bg 0, bg->fg 1], [fg->bg 1, 1]]
    assert r["confusion"].tolist() == [[0, 1], [1, 1]]
    assert r["metrics"]["iou"] == pytest.approx([0.0, 1 / 3])
    assert r["metrics"]["ap"] == pytest.approx(0.5 + 1 / 3, abs=1e-9)  # ranks 0.9+ 0.8- 0.3+
    assert r["metrics"]["f1_threshold"] == pytest.approx(0.3, abs=1e-3)
    assert r["metrics"]["best_f1"] == pytest.approx(0.8)
    assert len(r["pr_curves"]["per_class"]) == 2 and r["label_mode"] == "binary"
