"""Backbones: timm feature extractors (and segzoo's HRNet body) behind one contract.

Contract: ``forward(x) -> list[Tensor]``, with ``channels`` and ``strides`` tuples.
"""

from __future__ import annotations

import os

from segzoo.backbones.timm import TimmBackbone


def make_backbone(
    name: str, output_stride: int, weights: str | os.PathLike | None, levels: int | None = None
):
    """A backbone by name: HRNet names give segzoo's HRNet body, anything else timm's.

    Args:
        levels: return only the last ``levels`` feature maps (all when None).
    """
    if name.startswith("hrnet_w"):
        from segzoo.models.hrnet import hrnet_backbone  # HRNetV2 body: all branches fused

        return hrnet_backbone(name, weights=weights)
    indices = None if levels is None else tuple(range(-levels, 0))
    return TimmBackbone(name, out_indices=indices, output_stride=output_stride, weights=weights)


__all__ = ["TimmBackbone", "make_backbone"]
