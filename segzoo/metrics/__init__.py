"""Evaluation metrics: semantic confusion matrix, COCO box/mask AP, precision-recall curves."""

from segzoo.metrics.coco import CocoEvaluator
from segzoo.metrics.semantic import SegmentationMetric, format_table

__all__ = ["CocoEvaluator", "SegmentationMetric", "format_table"]
