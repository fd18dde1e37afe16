"""Merging a list of feature maps of different strides into one map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_concat(feats: Sequence[torch.Tensor], align_corners: bool = False) -> torch.Tensor:
    """Every map upsampled bilinearly to the first (finest) one's size, then concatenated.

    This is the HRNetV2 representation (Sun et al. 2019) and mmsegmentation's
    ``input_transform="resize_concat"``: for HRNet's four branches of ``C, 2C, 4C, 8C``
    channels it gives ``15C`` channels at stride 4.

    Args:
        feats: maps ``N x C_i x H_i x W_i``, finest first.
        align_corners: ``align_corners`` of the bilinear upsampling.

    Returns:
        ``N x sum(C_i) x H_0 x W_0``.
    """
    size = feats[0].shape[-2:]
    ups = [F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners) for x in feats[1:]]
    return torch.cat([feats[0], *ups], dim=1)  # (N, sum C_i, H_0, W_0)


__all__ = ["resize_concat"]
