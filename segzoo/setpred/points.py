"""Point sampling of mask logits (PointRend, Kirillov et al. 2020, as Mask2Former uses it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``x`` (``N x C x H x W``) at ``coords`` (``N x P x 2``, ``(x, y)`` in
    ``[0, 1]`` of the whole map, pixel-area convention): ``N x C x P``."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2) in grid_sample's [-1, 1]
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", align_corners=False).squeeze(3)


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                     importance_sample_ratio: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """PointRend's importance sampling for ``logits`` (``N x 1 x H x W``): draw
    ``num_points * oversample_ratio`` uniform points, keep the ``importance_sample_ratio *
    num_points`` with the smallest ``|logit|`` (the most uncertain), and add uniform points for the
    rest. Returns ``N x num_points x 2`` coordinates in ``[0, 1]``.

    The random draws are, in order, ``rand(N, num_points * oversample_ratio, 2)`` then
    ``rand(N, num_points - kept, 2)``, the order of the reference implementations, so a seeded
    generator gives their points."""
    n = logits.shape[0]
    drawn = int(num_points * oversample_ratio)
    coords = torch.rand(n, drawn, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits, coords).abs()[:, 0]  # (N, drawn)
    kept = int(importance_sample_ratio * num_points)
    idx = uncertainty.topk(kept, dim=1).indices  # (N, kept)
    coords_kept = coords.gather(1, idx[..., None].expand(n, kept, 2))
    if num_points > kept:
        extra = torch.rand(n, num_points - kept, 2, device=logits.device, generator=generator)
        coords_kept = torch.cat([coords_kept, extra], dim=1)
    return coords_kept
