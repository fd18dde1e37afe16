"""Collate functions: a list of ``(image, target)`` samples -> one batch, one function per target kind.

Semantic samples are padded to one stack (masks padded with ``ignore_index``); box, instance and
panoptic samples stay lists of plain tensors (detection models take a list of images).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

SEMANTIC_IGNORE = 255


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def collate_semantic(batch: Sequence[tuple], ignore_index: int = SEMANTIC_IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` pairs, padding every sample at the bottom/right to the batch's largest
    size (images with 0, masks with ``ignore_index``, so padding never counts in losses or metrics).

    Returns:
        images ``N x 3 x H x W`` float and masks ``N x H x W`` int64.
    """
    hmax = max(int(im.shape[-2]) for im, _ in batch)
    wmax = max(int(im.shape[-1]) for im, _ in batch)
    images, masks = [], []
    for im, m in batch:
        im, m = _plain(im), _plain(m).long()
        if m.dim() == 3 and m.shape[0] == 1:
            m = m[0]
        ph, pw = hmax - im.shape[-2], wmax - im.shape[-1]
        images.append(F.pad(im, (0, pw, 0, ph)))
        masks.append(F.pad(m, (0, pw, 0, ph), value=ignore_index))
    return torch.stack(images), torch.stack(masks)


def collate_multi_hot(batch: Sequence[tuple], ignore_index: int = SEMANTIC_IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, multi-hot C x H x W mask)`` pairs as :func:`collate_semantic` does (padding: image 0,
    masks ``ignore_index``). Returns images ``N x 3 x H x W`` and masks ``N x C x H x W`` uint8."""
    hmax = max(int(im.shape[-2]) for im, _ in batch)
    wmax = max(int(im.shape[-1]) for im, _ in batch)
    images, masks = [], []
    for im, m in batch:
        im, m = _plain(im), _plain(m).to(torch.uint8)
        ph, pw = hmax - im.shape[-2], wmax - im.shape[-1]
        images.append(F.pad(im, (0, pw, 0, ph)))
        masks.append(F.pad(m, (0, pw, 0, ph), value=ignore_index))
    return torch.stack(images), torch.stack(masks)


def collate_instances(batch: Sequence[tuple]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep variable-size detection samples as lists: ``([3 x H x W, ...], [target dict, ...])``
    with plain tensors (boxes K x 4 xyxy float, labels K int64, masks K x H x W uint8)."""
    images = [_plain(im) for im, _ in batch]
    targets = []
    for _, t in batch:
        out = {k: _plain(v) for k, v in t.items()}
        out["boxes"] = out["boxes"].float().reshape(-1, 4)
        out["labels"] = out["labels"].long()
        if "masks" in out:
            out["masks"] = out["masks"].to(torch.uint8)
        targets.append(out)
    return images, targets
