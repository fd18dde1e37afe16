"""Semantic segmentation: logits per pixel, scored with a confusion matrix (mIoU and friends).

A semantic model's ``label_mode`` (:data:`segzoo.spec.LABEL_MODES`) picks the task object's variant
(:meth:`SemanticTask.for_model`): its target kind, metric, drawing and the threshold it tunes
(:mod:`segzoo.tasks.label_modes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segzoo.config import ConfigError, EvalConfig
from segzoo.data.targets import CLASS_MAP, MULTI_HOT, Target
from segzoo.inference import check_tta, semantic_probs
from segzoo.metrics import PRCurve, SegmentationMetric, format_table, plot_confusion_matrix
from segzoo.metrics.multilabel import SigmoidMetric, best_threshold
from segzoo.spec import LABEL_MODES
from segzoo.tasks.base import PANEL_TITLES, EvalOptions, Item, Labels, Task, TaskMetric, pct
from segzoo.tasks.label_modes import (
    BinaryMetric,
    MultiLabelMetric,
    draw_multilabel,
    model_threshold,
    multilabel_table,
    per_class_csv,
)
from segzoo.visualize import color_palette, draw_legend, draw_semantic, side_by_side


class SemanticMetric(TaskMetric):
    """:class:`~segzoo.metrics.SegmentationMetric` on the argmax of the probabilities, and
    :class:`~segzoo.metrics.PRCurve` on the probabilities with ``curves``."""

    def __init__(self, num_classes: int, ignore_index: int = 255, curves: bool = False) -> None:
        self.matrix = SegmentationMetric(num_classes, ignore_index=ignore_index)
        self.pr = PRCurve(num_classes, ignore_index=ignore_index) if curves else None

    def reset(self) -> None:
        self.matrix.reset()
        if self.pr is not None:
            self.pr.reset()

    def update(self, items: Sequence[Item], predictions: torch.Tensor) -> None:
        masks = predictions.argmax(1).cpu()  # (G, H, W)
        targets = torch.stack([t[0] if t.dim() == 3 else t for _, _, t in items]).long()
        self.matrix.update(masks, targets)
        if self.pr is not None:
            self.pr.update(predictions.cpu(), targets)

    def compute(self) -> dict[str, Any]:
        self.matrix.reduce()
        out: dict[str, Any] = {"metrics": self.matrix.compute(), "confusion": self.matrix.confusion.cpu()}
        if self.pr is not None:
            self.pr.reduce()
            out["pr_curves"] = self.pr.compute()
            out["metrics"]["pr_map"] = out["pr_curves"]["map"]
        return out


class SemanticTask(Task):
    """The semantic task of one label mode: ``multiclass`` (softmax, argmax), ``binary`` (one sigmoid and the
    model's threshold) or ``multilabel`` (one sigmoid per class, 0.5)."""

    name = "semantic"
    primary = "miou"
    summary = ("miou", "pixel_acc", "mean_acc", "fwiou", "mdice")
    pr_metric = "pr_map"

    def __init__(self, label_mode: str = "multiclass", threshold: float = 0.5) -> None:
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        self.label_mode, self.threshold = label_mode, float(threshold)
        if label_mode == "binary":
            self.summary = ("miou", "ap", "best_f1", "f1_threshold", "pixel_acc", "mdice")
        elif label_mode == "multilabel":
            self.summary = ("miou", "mdice", "map", "best_f1")

    def for_model(self, model: Any) -> SemanticTask:
        """The variant of ``model.label_mode`` (the binary one with the model's threshold)."""
        mode = getattr(model, "label_mode", LABEL_MODES[0])
        if mode == self.label_mode == LABEL_MODES[0]:
            return self
        return SemanticTask(mode, model_threshold(model) if mode == "binary" else 0.5)

    def for_result(self, result: dict[str, Any]) -> SemanticTask:
        """The variant that made an evaluation result (its ``label_mode``)."""
        mode = result.get("label_mode", LABEL_MODES[0])
        return self if mode == self.label_mode else SemanticTask(mode)

    def __repr__(self) -> str:
        return "<task semantic>" if self.label_mode == LABEL_MODES[0] else f"<task semantic ({self.label_mode})>"

    def metric_names(self) -> tuple[str, ...]:
        if self.label_mode == "multilabel":
            return SigmoidMetric.SCALARS
        extra = ("ap", "best_f1", "f1_threshold") if self.label_mode == "binary" else ()
        return (*SegmentationMetric.SCALARS, *extra)

    def data_classes(self, model: Any) -> int:
        """Binary models (one logit) are scored on two labels, background and foreground."""
        return 2 if self.label_mode == "binary" else int(model.num_classes)

    def tune(self, model: Any, metrics: dict[str, Any]) -> float | None:
        """Binary models: write the F1-maximising threshold of the validation PR curve (``f1_threshold``) into
        ``model.spec.threshold`` (so into the checkpoint header) and return it; the other modes keep theirs."""
        t = best_threshold({"f1_threshold": [metrics.get("f1_threshold")]}) if self.label_mode == "binary" else None
        if t is not None and hasattr(model, "spec"):
            model.spec = dataclasses.replace(model.spec, threshold=round(t, 6))
        return t

    def check_data(self, target: Any, model_name: str = "the model") -> None:
        if isinstance(target, dict):
            raise ValueError(f"the data gives box/instance targets but {model_name} is a semantic model; evaluate "
                             "it on semantic data (data.type: mask_folder, coco_semantic or shapes)")
        dims = torch.as_tensor(target).dim()
        if self.label_mode == "multilabel" and dims != 3:
            raise ValueError(f"{model_name} is a multi-label model but the data gives one label map per image; it "
                             "needs one 0/1 mask per class (data.type: mask_folders, shapes_multilabel, or coco, "
                             "labelme or cvat, which read overlapping regions as multi-label for these models)")
        if self.label_mode != "multilabel" and dims == 3 and torch.as_tensor(target).shape[0] > 1:
            raise ValueError(f"the data gives multi-label masks (C x H x W) but {model_name} is a {self.label_mode} "
                             "model; build it with label_mode=multilabel (model.label_mode: multilabel)")

    def check_aspect_ratio_groups(self) -> None:
        raise ValueError("data.aspect_ratio_groups groups detection, instance and panoptic batches by aspect "
                         "ratio; semantic training crops every image to one size: remove it")

    @property
    def target(self) -> Target:
        return MULTI_HOT if self.label_mode == "multilabel" else CLASS_MAP

    def protocol(self, ec: EvalConfig) -> dict[str, Any]:
        """``whole``: the image (fitted to ``eval.resize`` if set) in one forward; ``slide``: windows of
        ``eval.crop`` stepping by ``eval.stride`` (default two thirds of the crop, as the official HRNet test),
        logits averaged where windows overlap (mmsegmentation's ``slide``); ``scales``/``flip``: softmax
        probabilities averaged over the scaled and mirrored views."""
        if ec.mode == "slide" and ec.crop is None:
            raise ConfigError("eval.mode=slide needs eval.crop (the window, e.g. [512, 1024]); or use eval.mode=whole")
        if ec.mode == "whole" and (ec.crop is not None or ec.stride is not None):
            raise ConfigError("eval.crop and eval.stride apply to eval.mode=slide; set eval.mode=slide or remove them")
        out: dict[str, Any] = {"resize": ec.resize}
        if ec.mode == "slide":
            crop = (ec.crop, ec.crop) if isinstance(ec.crop, int) else tuple(ec.crop)
            stride = ec.stride if ec.stride is not None else tuple(max(1, (2 * c) // 3) for c in crop)
            out.update(tile=crop, stride=stride, blend="mean")
        if tuple(ec.scales) != (1.0,) or ec.flip:
            out["tta"] = {"scales": tuple(ec.scales), "flip": ec.flip}
        return out

    def check_options(self, opts: EvalOptions) -> None:
        check_tta(self.name, opts.tta, opts.tile)

    def forward(self, model: nn.Module, images: list[torch.Tensor], device: torch.device,
                opts: EvalOptions) -> torch.Tensor:
        """``G x C x H x W`` probabilities."""
        x = torch.stack(images).to(device, non_blocking=True)
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return semantic_probs(model, x, opts.tile, opts.overlap, opts.tta, opts.batch_size, stride=opts.stride,
                              blend=opts.blend, resize=opts.resize)

    def shown(self, predictions: torch.Tensor) -> list:
        if self.label_mode == "binary":
            return list((predictions[:, 0] >= self.threshold).long().cpu())
        if self.label_mode == "multilabel":
            return list((predictions >= self.threshold).to(torch.uint8).cpu())
        return list(predictions.argmax(1).cpu())

    def metric(self, model: nn.Module, data, labels: Labels, *, curves: bool = False) -> TaskMetric:
        if self.label_mode == "binary":
            return BinaryMetric(model_threshold(model), labels.ignore_index, curves)
        if self.label_mode == "multilabel":
            return MultiLabelMetric(labels.num_classes, self.threshold, labels.ignore_index, curves)
        return SemanticMetric(labels.num_classes, labels.ignore_index, curves)

    def draw(self, image: torch.Tensor, pred, target, labels: Labels, score_threshold: float = 0.5) -> torch.Tensor:
        """The legend lists the classes drawn in either picture except background (class 0); multi-label
        models: every class's mask blended in its colour."""
        if self.label_mode == "multilabel":
            return draw_multilabel(image, pred, target, labels)
        names, num_classes = labels.shown_names, labels.num_classes
        kw = dict(num_classes=num_classes, class_names=names, ignore_index=labels.ignore_index, skip_background=True)
        pred_pic = draw_semantic(image, pred, **kw)
        gt_pic = draw_semantic(image, target, **kw)
        found = torch.cat([torch.as_tensor(pred).reshape(-1), torch.as_tensor(target).reshape(-1)]).unique()
        present = [int(k) for k in found if 0 < k < num_classes]
        legend = draw_legend(names, color_palette(num_classes), height=int(image.shape[-2]), classes=present)
        return side_by_side([image, pred_pic, gt_pic, legend], titles=(*PANEL_TITLES, ""))

    def format_results(self, result: dict[str, Any]) -> str:
        task = self.for_result(result)
        if task is not self:
            return task.format_results(result)
        metrics = result["metrics"]
        if self.label_mode == "multilabel":
            return multilabel_table(result)
        text = format_table(metrics, result["class_names"])
        if self.label_mode == "binary":
            text += (f"\n{'ap':<10} {pct(metrics['ap']):>7}\n{'best_f1':<10} {pct(metrics['best_f1']):>7}"
                     f"\nthreshold  {metrics['threshold']:.3f} (F1-best on this data: {metrics['f1_threshold']:.3f})")
        if "pr_map" in metrics:
            text += f"\n{'pr_map':<10} {pct(metrics['pr_map']):>7}"
        return text

    def write_tables(self, result: dict[str, Any], out, write: Callable[[Any, bytes], None]) -> None:
        """``confusion.csv``: rows ground truth, columns prediction; multi-label models: ``per_class.csv``."""
        if result.get("label_mode") == "multilabel":
            write(out / "per_class.csv", per_class_csv(result))
            return
        names = result["class_names"]
        rows = [",".join(["gt\\pred", *names])]
        rows += [",".join([n, *map(str, r)]) for n, r in zip(names, result["confusion"].tolist())]
        write(out / "confusion.csv", ("\n".join(rows) + "\n").encode())

    def plot(self, result: dict[str, Any], out) -> None:
        if "confusion" not in result:
            return
        plot_confusion_matrix(result["confusion"], out / "confusion.png", result["class_names"])

    def describe_prediction(self, result: dict[str, Any], name: Callable[[int], str], score_thresh: float,
                            keep_thresh: float) -> str:
        if "class_masks" in result:  # multi-label: every class present somewhere
            return ", ".join(name(k) for k in range(len(result["class_masks"])) if bool(result["class_masks"][k].any()))
        return ", ".join(name(int(k)) for k in torch.unique(result["mask"]))
