"""Semantic segmentation: logits per pixel, scored with a confusion matrix (mIoU and friends)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segzoo.config import ConfigError, EvalConfig
from segzoo.data.targets import CLASS_MAP, Target
from segzoo.inference import check_tta, semantic_probs
from segzoo.metrics import PRCurve, SegmentationMetric, format_table, plot_confusion_matrix
from segzoo.tasks.base import PANEL_TITLES, EvalOptions, Item, Labels, Task, TaskMetric, pct
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
    name = "semantic"
    primary = "miou"
    summary = ("miou", "pixel_acc", "mean_acc", "fwiou", "mdice")
    pr_metric = "pr_map"

    def metric_names(self) -> tuple[str, ...]:
        return SegmentationMetric.SCALARS

    def check_data(self, target: Any, model_name: str = "the model") -> None:
        if isinstance(target, dict):
            raise ValueError(f"the data gives box/instance targets but {model_name} is a semantic model; evaluate "
                             "it on semantic data (data.type: mask_folder, coco_semantic or shapes)")

    def check_aspect_ratio_groups(self) -> None:
        raise ValueError("data.aspect_ratio_groups groups detection, instance and panoptic batches by aspect "
                         "ratio; semantic training crops every image to one size: remove it")

    @property
    def target(self) -> Target:
        return CLASS_MAP

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
        return list(predictions.argmax(1).cpu())

    def metric(self, model: nn.Module, data, labels: Labels, *, curves: bool = False) -> SemanticMetric:
        return SemanticMetric(labels.num_classes, labels.ignore_index, curves)

    def draw(self, image: torch.Tensor, pred, target, labels: Labels, score_threshold: float = 0.5) -> torch.Tensor:
        """The legend lists the classes drawn in either picture except background (class 0)."""
        names, num_classes = labels.shown_names, labels.num_classes
        kw = dict(num_classes=num_classes, class_names=names, ignore_index=labels.ignore_index, skip_background=True)
        pred_pic = draw_semantic(image, pred, **kw)
        gt_pic = draw_semantic(image, target, **kw)
        found = torch.cat([torch.as_tensor(pred).reshape(-1), torch.as_tensor(target).reshape(-1)]).unique()
        present = [int(k) for k in found if 0 < k < num_classes]
        legend = draw_legend(names, color_palette(num_classes), height=int(image.shape[-2]), classes=present)
        return side_by_side([image, pred_pic, gt_pic, legend], titles=(*PANEL_TITLES, ""))

    def format_results(self, result: dict[str, Any]) -> str:
        metrics = result["metrics"]
        text = format_table(metrics, result["class_names"])
        if "pr_map" in metrics:
            text += f"\n{'pr_map':<10} {pct(metrics['pr_map']):>7}"
        return text

    def write_tables(self, result: dict[str, Any], out, write: Callable[[Any, bytes], None]) -> None:
        """``confusion.csv``: rows ground truth, columns prediction."""
        names = result["class_names"]
        rows = [",".join(["gt\\pred", *names])]
        rows += [",".join([n, *map(str, r)]) for n, r in zip(names, result["confusion"].tolist())]
        write(out / "confusion.csv", ("\n".join(rows) + "\n").encode())

    def plot(self, result: dict[str, Any], out) -> None:
        plot_confusion_matrix(result["confusion"], out / "confusion.png", result["class_names"])

    def describe_prediction(self, result: dict[str, Any], name: Callable[[int], str], score_thresh: float,
                            keep_thresh: float) -> str:
        return ", ".join(name(int(k)) for k in torch.unique(result["mask"]))
