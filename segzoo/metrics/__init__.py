"""Evaluation metrics: semantic confusion matrix, COCO box/mask AP, precision-recall curves."""

from segzoo.metrics.semantic import SegmentationMetric, format_table

__all__ = ["SegmentationMetric", "format_table"]
