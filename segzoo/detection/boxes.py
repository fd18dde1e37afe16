"""Box utilities shared by the detection models (Mask R-CNN, CenterNet).

Boxes are ``(..., 4)`` tensors in ``xyxy`` pixel coordinates of the (unpadded) input
image. Functions work on any leading shape so that a whole batch ``(N, K, 4)`` is handled
in one call; per-image values such as ``image_sizes`` (``N x 2``, height and width)
broadcast over ``K``.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, nms

from segzoo.layers.tracing import is_tracing


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(..., 4)`` xyxy boxes, ``(...)``; degenerate boxes give 0 or less."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clip boxes to their image.

    Args:
        boxes: ``(N, K, 4)`` (or ``(K, 4)``) xyxy boxes.
        image_sizes: ``(N, 2)`` (or ``(2,)``) height and width of each image.

    Returns:
        Boxes of the same shape with x in ``[0, width]`` and y in ``[0, height]``.
    """
    sizes = image_sizes.to(boxes.dtype)
    h = sizes[..., 0, None]  # (N, 1): broadcasts over the K boxes of each image
    w = sizes[..., 1, None]
    zero = boxes.new_zeros(())
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def min_size_mask(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Boolean ``(...)`` mask of the boxes whose width and height are both ``>= min_size``.

    A mask (not indices) so that batched code keeps fixed shapes.
    """
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh >= min_size).all(dim=-1)


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU between every pair of boxes.

    Args:
        boxes1: ``(K, 4)`` or batched ``(N, K, 4)``.
        boxes2: ``(M, 4)`` or batched ``(N, M, 4)``.

    Returns:
        ``(K, M)`` or ``(N, K, M)`` IoU; 0 where the union is empty.
    """
    # one formula for 2-D and batched input (torchvision's box_iou gives NaN for two empty boxes)
    area1 = box_area(boxes1)  # (N, K)
    area2 = box_area(boxes2)  # (N, M)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # (N, K, M, 2)
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, K, M)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def group_major_order(group: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``group`` (``(L,)`` int64) and keep the given order inside each group.

    A stable sort, written as a sort of unique keys ``group * L + position`` so that it also
    exports to ONNX (which has no stable sort).
    """
    position = torch.ones_like(group).cumsum(0) - 1  # arange(L) without a Python length
    return torch.sort(group * group.shape[0] + position).indices


def group_counts(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``(num_groups,)`` number of elements in each group: a fixed size, unlike ``bincount``
    (whose length depends on the largest id), so it traces, compiles and exports."""
    return torch.zeros(num_groups, dtype=group.dtype, device=group.device).scatter_add_(
        0, group, torch.ones_like(group))


def rank_in_group(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Position of each element among the elements of its group, in the given order.

    With ``group`` the image index of detections already sorted by decreasing score,
    ``rank_in_group(group, n) < k`` keeps the top ``k`` of each image without a loop.

    Args:
        group: ``(L,)`` int64 group ids in ``[0, num_groups)``.
        num_groups: number of groups.

    Returns:
        ``(L,)`` int64 ranks (0 for the first element of each group).
    """
    order = group_major_order(group)
    counts = group_counts(group, num_groups)
    starts = torch.cumsum(counts, 0) - counts  # (num_groups,) first position of each group
    ranks_sorted = torch.ones_like(group).cumsum(0) - 1 - starts[group[order]]  # arange, export-safe
    ranks = torch.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def nms_by_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thresh: float
                 ) -> torch.Tensor:
    """Indices kept by NMS run separately in each group, by decreasing score.

    Eager: ``torchvision.ops.batched_nms``. Under ``torch.export`` / ``torch.compile``: one
    ``nms`` on boxes shifted apart by group (the same result; ``batched_nms`` itself branches
    on the number of boxes, which export cannot trace).
    """
    if not is_tracing():
        return batched_nms(boxes, scores, groups, iou_thresh)
    top = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()  # safe when there are no boxes
    shift = groups.to(boxes) * (top + 1)
    keep = nms(boxes + shift[:, None], scores, iou_thresh)
    # NMS keeps at most its input: without this bound the exported graph carries
    # unbounded sizes whose range asserts overflow int64 in the ONNX translation
    torch._check(keep.shape[0] <= boxes.shape[0])
    return keep


def split_sizes(image_idx: torch.Tensor, num_images: int) -> list[int]:
    """Rows per image, as the Python ints ``torch.split`` takes for rows grouped by image.

    This is the single host sync at the end of batched postprocessing. Under
    ``torch.compile`` the sizes become symbolic ints, checked to add up to the row count
    so that the split traces into the same graph.
    """
    sizes = group_counts(image_idx, num_images).tolist()
    if torch.compiler.is_compiling():
        for size in sizes:
            torch._check(size >= 0)
        torch._check(sum(sizes) == image_idx.shape[0])
    return sizes


__all__ = ["box_area", "clip_boxes", "group_counts", "group_major_order", "min_size_mask", "nms_by_group",
           "pairwise_iou", "rank_in_group", "split_sizes"]
