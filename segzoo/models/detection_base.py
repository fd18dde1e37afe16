"""Shared input handling for detection and instance models (Faster/Mask R-CNN, CenterNet).

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

from segzoo.layers.tracing import is_tracing
from segzoo.models.base import Model, check_image_tensor, check_image_values, refuse_non_tensors


def image_shapes(images: torch.Tensor | Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``(height, width)`` of each image, as Python ints (read from the shapes: no sync)."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            return [(int(images.shape[-2]), int(images.shape[-1]))]
        return [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
    return [(int(im.shape[-2]), int(im.shape[-1])) for im in images]


class DetectionModel(Model):
    """Base class of detection (``task="detection"``) and instance models.

    Subclasses set ``size_divisibility`` and ``task`` and use :meth:`preprocess` and
    :meth:`check_targets`. ``num_classes`` counts object classes only: background is
    implicit, labels are 0-based. An empty batch (``0 x 3 x H x W`` or ``[]``) gives an
    empty list; :meth:`is_empty` tells. Class attributes as in
    :class:`~segzoo.models.base.Model`.
    """

    task = "detection"
    size_divisibility: int = 32
    counts = "object classes only; background is implicit"

    @staticmethod
    def is_empty(images: torch.Tensor | Sequence[torch.Tensor]) -> bool:
        """True for a batch without images (``[]`` or ``0 x 3 x H x W``), after checking the type."""
        refuse_non_tensors(images)
        if isinstance(images, torch.Tensor):
            if images.dim() == 4 and images.shape[0] == 0:
                check_image_tensor(images, values=False)  # dtype and channels still checked
                return True
            return False
        return len(images) == 0

    def empty_result(self, targets: Sequence[dict] | None) -> list:
        if targets is not None:
            raise ValueError("got an empty batch with targets: losses need at least one image")
        return []

    def preprocess(
        self, images: torch.Tensor | Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise and zero-pad images into one batch.

        Returns:
            ``x``: ``N x 3 x Hp x Wp`` normalised batch, bottom/right padded to a multiple
            of ``size_divisibility``; ``image_sizes``: int64 ``N x 2`` (height, width) of
            each image before padding, on the images' device.
        """
        refuse_non_tensors(images)
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
            x = self.normalize(images)  # a new tensor, so when no padding is needed it is the batch itself
            d = self.size_divisibility
            pad_w, pad_h = (-w) % d, (-h) % d
            return (F.pad(x, (0, pad_w, 0, pad_h)) if pad_w or pad_h else x), sizes
        images = list(images)
        if not images:
            raise ValueError("got an empty list of images")
        for i, im in enumerate(images):
            if im.dim() != 3:
                raise ValueError(f"images[{i}] must be a 3 x H x W tensor, got {tuple(im.shape)}")
            check_image_tensor(im, f"images[{i}]", values=False)
        if self.check_inputs:
            check_image_values(images, [f"images[{i}]" for i in range(len(images))])
        d = self.size_divisibility
        hmax = max(im.shape[-2] for im in images)
        wmax = max(im.shape[-1] for im in images)
        hp, wp = hmax + (-hmax) % d, wmax + (-wmax) % d
        x = self.pixel_mean.new_zeros(len(images), 3, hp, wp, device=images[0].device)
        for i, im in enumerate(images):  # one copy per image; sizes differ so no batched op
            x[i, :, : im.shape[-2], : im.shape[-1]] = self.normalize(im[None])[0]
        sizes = torch.tensor([list(im.shape[-2:]) for im in images], device=x.device)
        return x, sizes

    def check_targets(
        self, targets: Sequence[dict], shapes: Sequence[tuple[int, int]] | torch.Tensor,
        need_masks: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Validate targets against the images; returns them with canonical dtypes.

        Shapes and types are checked on the host; the values (labels in range, finite
        boxes with x1 <= x2 and y1 <= y2, no empty box after clipping to the image) are
        checked for the whole batch at once, with one device-to-host sync. Boxes partly
        outside their image are clipped to it.

        Args:
            targets: one dict per image.
            shapes: ``(height, width)`` of each image, Python ints (:func:`image_shapes`) or an
                ``N x 2`` tensor (read with one more sync).
            need_masks: instance models: every target needs ``masks``.

        Raises:
            ValueError: with a message that says how to fix the data.
        """
        device = self.pixel_mean.device
        if isinstance(shapes, torch.Tensor):
            device = shapes.device
            shapes = [tuple(s) for s in shapes.tolist()]
        if isinstance(targets, dict):
            targets = [targets]
        targets = list(targets)
        if len(targets) != len(shapes):
            raise ValueError(f"got {len(targets)} targets for {len(shapes)} images; pass one "
                             "dict per image (an empty one for images without objects)")
        out = []
        for i, (t, (h, w)) in enumerate(zip(targets, shapes)):
            if not isinstance(t, dict):
                raise TypeError(f"targets[{i}] must be a dict with boxes and labels, got {type(t)}")
            boxes = torch.as_tensor(t.get("boxes", torch.zeros(0, 4)), dtype=torch.float32,
                                    device=device).reshape(-1, 4)
            labels = torch.as_tensor(t.get("labels", torch.zeros(0, dtype=torch.int64)), device=device)
            if labels.is_floating_point():
                raise ValueError(f"targets[{i}]['labels'] must be integers, got {labels.dtype}")
            labels = labels.long().reshape(-1)
            if len(labels) != len(boxes):
                raise ValueError(
                    f"targets[{i}] has {len(boxes)} boxes but {len(labels)} labels; give one label "
                    "per box")
            item = {"boxes": boxes, "labels": labels}
            if need_masks:
                masks = t.get("masks")
                if masks is None:
                    raise ValueError(f"targets[{i}] has no 'masks'; instance models need K x H x W "
                                     "masks (one per box)")
                masks = torch.as_tensor(masks, device=device)
                if masks.dim() != 3 or masks.shape[0] != len(boxes) or tuple(masks.shape[1:]) != (h, w):
                    raise ValueError(
                        f"targets[{i}]['masks'] has shape {tuple(masks.shape)}, expected "
                        f"({len(boxes)}, {h}, {w}): one mask per box at the image size")
                item["masks"] = masks
            out.append(item)
        counts = [len(t["boxes"]) for t in out]
        if sum(counts) == 0:
            return out
        boxes = torch.cat([t["boxes"] for t in out])  # (M, 4), every object of the batch
        labels = torch.cat([t["labels"] for t in out])
        image_idx = torch.repeat_interleave(torch.arange(len(out), device=device),
                                            torch.tensor(counts, device=device), output_size=sum(counts))
        hw = torch.tensor(list(shapes), dtype=boxes.dtype, device=device)[image_idx]  # (M, 2)
        # boxes partly outside the image are clipped to it (what a crop leaves behind)
        limit = hw[:, [1, 0, 1, 0]]  # (M, 4): w, h, w, h
        clipped = torch.minimum(boxes.clamp(min=0), limit)
        if not is_tracing():
            problems = torch.stack([
                (labels < 0) | (labels >= self.num_classes),
                (boxes[:, 2:] < boxes[:, :2]).any(dim=1),
                ~torch.isfinite(boxes).all(dim=1),
                ((clipped[:, 2:] - clipped[:, :2]) < 1e-3).any(dim=1),
            ])  # (4, M)
            if problems.any():  # the one host sync of the batch
                self._raise_first_problem(out, clipped, shapes)
        for t, b in zip(out, clipped.split(counts)):
            t["boxes"] = b
        return out

    def _raise_first_problem(self, targets: list[dict], clipped: torch.Tensor,
                             shapes: Sequence[tuple[int, int]]) -> None:
        """Word the error for the first image with a bad object (the error path: syncs are fine)."""
        counts = [len(t["boxes"]) for t in targets]
        for i, (t, c, (h, w)) in enumerate(zip(targets, clipped.split(counts), shapes)):
            boxes, labels = t["boxes"], t["labels"]
            if not len(labels):
                continue
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
            degenerate = ((c[:, 2] - c[:, 0]) < 1e-3) | ((c[:, 3] - c[:, 1]) < 1e-3)
            if bool(degenerate.any()):
                idx = degenerate.nonzero().flatten().tolist()
                raise ValueError(
                    f"targets[{i}] has {len(idx)} box(es) with zero width or height (after "
                    f"clipping to the {h}x{w} image) at indices {idx[:10]}; remove them before "
                    "the model (torchvision.transforms.v2.SanitizeBoundingBoxes does, and "
                    "segzoo's transform presets include it)")
        raise AssertionError("a target problem was flagged but not found")  # pragma: no cover
