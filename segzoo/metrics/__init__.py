"""Evaluation metrics: semantic confusion matrix, COCO box/mask AP, precision-recall curves, panoptic quality."""

from segzoo.metrics.coco import CocoEvaluator
from segzoo.metrics.curves import DetectionPRCurve, PRCurve, plot_confusion_matrix, plot_pr_curves
from segzoo.metrics.panoptic import PanopticQuality
from segzoo.metrics.semantic import SegmentationMetric, format_table

__all__ = [
    "CocoEvaluator",
    "DetectionPRCurve",
    "PRCurve",
    "PanopticQuality",
    "SegmentationMetric",
    "format_table",
    "plot_confusion_matrix",
    "plot_pr_curves",
]
