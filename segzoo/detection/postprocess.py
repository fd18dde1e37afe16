"""Batched detection postprocessing and mask pasting.

Everything works on flat tensors with an image index (``image_idx``) per row: one
``batched_nms`` whose groups are ``image_idx * num_classes + label``, the top-k per image
by rank, and one split into per-image dicts at the very end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segzoo.detection.boxes import clip_boxes, group_major_order, min_size_mask, nms_by_group, rank_in_group


def detect(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_idx: torch.Tensor,
    image_sizes: torch.Tensor,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-wise detections from per-class boxes and scores of every region.

    Args:
        boxes: ``(R, C, 4)`` class-specific boxes of the R regions.
        scores: ``(R, C)`` class probabilities (background excluded).
        image_idx: ``(R,)`` image of each region.
        image_sizes: ``(N, 2)`` height and width of each image.
        score_thresh: keep scores strictly above this.
        nms_thresh: IoU threshold of the per-class NMS.
        detections_per_img: most detections kept per image.
        min_size: drop boxes narrower or lower than this (pixels).

    Returns:
        ``boxes`` ``(D, 4)``, ``scores`` ``(D,)``, ``labels`` ``(D,)`` (0-based) and
        ``image_idx`` ``(D,)``, grouped by image and sorted by decreasing score inside it.
    """
    r, c = scores.shape
    n = image_sizes.shape[0]
    boxes = clip_boxes(boxes, image_sizes[image_idx])  # (R, C, 4)
    labels = torch.arange(c, device=scores.device)[None].expand(r, c)  # (R, C)
    img = image_idx[:, None].expand(r, c)
    keep = (scores > score_thresh) & min_size_mask(boxes, min_size)  # (R, C)
    boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
    order = nms_by_group(boxes, scores, img * c + labels, nms_thresh)  # decreasing score
    order = order[rank_in_group(img[order], n) < detections_per_img]
    order = order[group_major_order(img[order])]  # group by image, scores still decreasing
    return boxes[order], scores[order], labels[order], img[order]


def _paste_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, mask_size: int) -> torch.Tensor:
    """Bilinear weights ``(D, size, mask_size)`` that resample a mask row onto pixels ``lo..hi``.

    Pixel ``x`` in ``[lo, hi]`` (integers, inclusive) samples the mask resized to
    ``hi - lo + 1`` pixels with ``F.interpolate(mode="bilinear", align_corners=False)``;
    other pixels get zero weight.
    """
    x = torch.arange(size, device=lo.device, dtype=torch.float32)[None]  # (1, size)
    length = (hi - lo + 1).clamp(min=1).to(torch.float32)[:, None]  # (D, 1)
    j = x - lo.to(torch.float32)[:, None]  # (D, size) position inside the pasted box
    src = ((j + 0.5) * (mask_size / length) - 0.5).clamp(min=0)
    i0 = src.floor().clamp(max=mask_size - 1)
    frac = src - i0
    i1 = (i0 + 1).clamp(max=mask_size - 1)
    valid = ((j >= 0) & (x <= hi.to(torch.float32)[:, None])).to(torch.float32)
    w = torch.zeros(*src.shape, mask_size, dtype=torch.float32, device=lo.device)  # (D, size, M)
    w.scatter_add_(2, i0.long()[..., None], ((1 - frac) * valid)[..., None])  # both taps add up where i0 == i1
    return w.scatter_add_(2, i1.long()[..., None], (frac * valid)[..., None])


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Paste ``M x M`` box-relative masks into ``height x width`` images, all at once.

    Follows torchvision's ``paste_masks_in_image`` exactly: the mask is padded by one zero
    pixel on each side, the box grown by the same factor and rounded towards zero, and
    the mask resized bilinearly onto the box's integer pixels. The resize is separable,
    so it is two batched matrix products instead of one ``interpolate`` per mask.

    Args:
        masks: ``(D, M, M)`` probabilities.
        boxes: ``(D, 4)`` xyxy boxes in image pixels.
        height: canvas height.
        width: canvas width.

    Returns:
        ``(D, height, width)`` masks, zero outside the (grown) boxes.
    """
    m = masks.shape[-1]
    padded = F.pad(masks, (1, 1, 1, 1))  # (D, M+2, M+2)
    scale = (m + 2) / m
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).to(torch.int64)
    wy = _paste_weights(grown[:, 1], grown[:, 3], height, m + 2)  # (D, H, M+2)
    wx = _paste_weights(grown[:, 0], grown[:, 2], width, m + 2)  # (D, W, M+2)
    rows = torch.bmm(wy, padded.to(torch.float32))  # (D, H, M+2)
    return torch.bmm(rows, wx.transpose(1, 2)).to(masks.dtype)  # (D, H, W)
