"""Targets for set prediction from segzoo's other label forms."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def semantic_to_set_targets(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> list[dict]:
    """Semantic maps (``N x H x W`` int64) as set targets: per image, one binary mask per class
    present, classes ascending. Ignored pixels belong to no mask (as in the paper's semantic
    training, they are negatives for every mask). Raises for labels outside
    ``[0, num_classes)`` other than ``ignore_index``."""
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"semantic labels must be integer N x H x W, got {labels.dtype} {tuple(labels.shape)}")
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= num_classes))[valid].any()):
        bad = torch.unique(labels[valid & ((labels < 0) | (labels >= num_classes))])[:10].tolist()
        raise ValueError(f"semantic labels hold {bad} but num_classes={num_classes} (ignore_index={ignore_index}); "
                         "set num_classes or map those values to ignore_index")
    present = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, torch.where(valid, labels, num_classes).flatten(1), True)
    out = []
    for i, row in enumerate(present[:, :num_classes].cpu()):  # one small copy; the masks stay on the device
        classes = row.nonzero().flatten().to(labels.device)
        out.append({"labels": classes, "masks": labels[i][None] == classes[:, None, None]})
    return out


def drop_crowd(targets: Sequence[dict]) -> list[dict]:
    """Targets without their ``iscrowd`` segments (the paper trains on non-crowd segments only;
    crowd pixels are negatives for every mask). Targets without ``iscrowd`` are returned as they
    are."""
    out = []
    for i, t in enumerate(targets):
        crowd = t.get("iscrowd")
        if crowd is None:
            out.append(t)
            continue
        crowd = torch.as_tensor(crowd, device=t["labels"].device).reshape(-1).bool()
        if len(crowd) != len(t["labels"]):
            raise ValueError(f"targets[{i}]['iscrowd'] has {len(crowd)} values for {len(t['labels'])} segments")
        keep = ~crowd
        out.append({**t, "labels": t["labels"][keep], "masks": t["masks"][keep], "iscrowd": crowd[keep]})
    return out


def set_targets(targets, num_classes: int, ignore_index: int = 255) -> list[dict]:
    """A model's training targets as set targets: one dict per image (a dict alone: one image) with its crowd
    segments dropped (:func:`drop_crowd`), or an ``N x H x W`` semantic label map turned into one mask per
    class present (:func:`semantic_to_set_targets`)."""
    if isinstance(targets, torch.Tensor):
        return semantic_to_set_targets(targets, num_classes, ignore_index)
    return drop_crowd([targets] if isinstance(targets, dict) else list(targets))
