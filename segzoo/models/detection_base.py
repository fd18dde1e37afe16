"""Shared input handling for detection and instance models (Mask R-CNN, CenterNet).

Forward contract (DESIGN.md): ``model(images)`` takes a batch ``N x 3 x H x W`` or a list
of ``3 x H x W`` float images in [0, 1] (sizes may differ) and returns a list with one
dict per image: ``boxes`` (K x 4, xyxy, input pixels), ``scores`` (K), ``labels`` (K,
int64, 0-based) and, for instance models, ``masks`` (K x H x W float probabilities).
``model(images, targets)`` returns a dict of losses with ``loss`` the weighted total.
Targets: one dict per image with ``boxes`` (K x 4 xyxy float), ``labels`` (K int64,
0-based, ``< num_classes``) and, for instance models, ``masks`` (K x H x W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.models.base import _is_tracing, check_image_tensor, check_image_values
from segzoo.registry import IMAGENET_MEAN, IMAGENET_STD


class DetectionModel(nn.Module):
    """Base class of detection (``task="detection"``) and instance models.

    Subclasses set ``size_divisibility`` and ``task`` and use :meth:`preprocess` and
    :meth:`check_targets`. ``num_classes`` counts object classes only: background is
    implicit, labels are 0-based. ``check_inputs`` as in :class:`SegmentationModel`.
    """

    task = "detection"
    class_layers: tuple[str, ...] = ()
    size_divisibility: int = 32
    check_inputs: bool = True

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int (object classes only; background is "
                f"implicit), got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.input_mean = tuple(float(v) for v in mean)  # recorded in model.spec
        self.input_std = tuple(float(v) for v in std)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(
        self, images: torch.Tensor | Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise and zero-pad images into one batch.

        Returns:
            ``x``: ``N x 3 x Hp x Wp`` normalised batch, bottom/right padded to a multiple
            of ``size_divisibility``; ``image_sizes``: int64 ``N x 2`` (height, width) of
            each image before padding, on the images' device.
        """
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4:
                raise ValueError(
                    f"images must be N x 3 x H x W or a list of 3 x H x W, got {tuple(images.shape)}"
                )
            check_image_tensor(images, values=self.check_inputs)
            n, _, h, w = images.shape
            sizes = torch.tensor([[h, w]] * n, device=images.device)
            x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
            d = self.size_divisibility
            return F.pad(x, (0, (-w) % d, 0, (-h) % d)), sizes
        images = list(images)
        if not images:
            raise ValueError("got an empty list of images")
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3:
                shape = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
                raise ValueError(f"images[{i}] must be a 3 x H x W tensor, got {shape}")
            check_image_tensor(im, f"images[{i}]", values=False)
        if self.check_inputs:
            check_image_values(images, [f"images[{i}]" for i in range(len(images))])
        d = self.size_divisibility
        hmax = max(im.shape[-2] for im in images)
        wmax = max(im.shape[-1] for im in images)
        hp, wp = hmax + (-hmax) % d, wmax + (-wmax) % d
        x = images[0].new_zeros(len(images), 3, hp, wp)
        for i, im in enumerate(images):  # one copy per image; sizes differ so no batched op
            x[i, :, : im.shape[-2], : im.shape[-1]] = (
                im - self.pixel_mean[0].to(im.dtype)) / self.pixel_std[0].to(im.dtype)
        sizes = torch.tensor([list(im.shape[-2:]) for im in images], device=x.device)
        return x, sizes

    def check_targets(
        self, targets: Sequence[dict], image_sizes: torch.Tensor, need_masks: bool = False
    ) -> list[dict[str, torch.Tensor]]:
        """Validate targets against the images; returns them with canonical dtypes.

        Raises:
            ValueError: with a message that says how to fix the data.
        """
        if isinstance(targets, dict):
            targets = [targets]
        targets = list(targets)
        if len(targets) != len(image_sizes):
            raise ValueError(f"got {len(targets)} targets for {len(image_sizes)} images; pass one "
                             "dict per image (an empty one for images without objects)")
        out = []
        sizes = image_sizes.tolist()
        for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
            if not isinstance(t, dict):
                raise TypeError(f"targets[{i}] must be a dict with boxes and labels, got {type(t)}")
            dev = image_sizes.device
            boxes = torch.as_tensor(t.get("boxes", torch.zeros(0, 4)), dtype=torch.float32,
                                    device=dev).reshape(-1, 4)
            labels = torch.as_tensor(t.get("labels", torch.zeros(0, dtype=torch.int64)), device=dev)
            if labels.is_floating_point():
                raise ValueError(f"targets[{i}]['labels'] must be integers, got {labels.dtype}")
            labels = labels.long().reshape(-1)
            if len(labels) != len(boxes):
                raise ValueError(
                    f"targets[{i}] has {len(boxes)} boxes but {len(labels)} labels; give one label "
                    "per box")
            if len(labels) and not _is_tracing():
                lo, hi = int(labels.min()), int(labels.max())
                if lo < 0 or hi >= self.num_classes:
                    bad = hi if hi >= self.num_classes else lo
                    raise ValueError(
                        f"targets[{i}] has label {bad} but num_classes={self.num_classes}; labels "
                        f"are 0-based object classes in [0, {self.num_classes - 1}] (background is "
                        "implicit: do not reserve 0 for it)")
                if bool((boxes[:, 2:] < boxes[:, :2]).any()):
                    raise ValueError(
                        f"targets[{i}] has boxes with x2 < x1 or y2 < y1; boxes must be xyxy in "
                        "input pixels (convert xywh with torchvision.ops.box_convert)")
                if not bool(torch.isfinite(boxes).all()):
                    raise ValueError(f"targets[{i}] has NaN or inf box coordinates")
            if len(boxes):
                # boxes partly outside the image are clipped to it (what a crop leaves behind)
                boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                     boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
                if not _is_tracing():
                    degenerate = ((boxes[:, 2] - boxes[:, 0]) < 1e-3) | ((boxes[:, 3] - boxes[:, 1]) < 1e-3)
                    if bool(degenerate.any()):
                        idx = degenerate.nonzero().flatten().tolist()
                        raise ValueError(
                            f"targets[{i}] has {len(idx)} box(es) with zero width or height (after "
                            f"clipping to the {h}x{w} image) at indices {idx[:10]}; remove them before "
                            "the model (torchvision.transforms.v2.SanitizeBoundingBoxes does, and "
                            "segzoo's transform presets include it)")
            item = {"boxes": boxes, "labels": labels}
            if need_masks:
                masks = t.get("masks")
                if masks is None:
                    raise ValueError(f"targets[{i}] has no 'masks'; instance models need K x H x W "
                                     "masks (one per box)")
                masks = torch.as_tensor(masks, device=dev)
                if masks.dim() != 3 or masks.shape[0] != len(boxes) or tuple(masks.shape[1:]) != (h, w):
                    raise ValueError(
                        f"targets[{i}]['masks'] has shape {tuple(masks.shape)}, expected "
                        f"({len(boxes)}, {h}, {w}): one mask per box at the image size")
                item["masks"] = masks
            out.append(item)
        return out
