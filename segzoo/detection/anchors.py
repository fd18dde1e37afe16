"""Anchor boxes for the RPN: one anchor size per pyramid level, several aspect ratios."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AnchorGenerator(nn.Module):
    """Anchors over every position of every pyramid level, as torchvision lays them out.

    At a level of stride ``s`` and size ``(h, w)`` the anchors are ordered (row, column,
    aspect ratio); the level's stride is ``padded image side // feature side`` (the
    exact torchvision rule, which gives 61 rather than 64 for P6 of an 800-pixel image).
    Base anchors for size ``a`` and ratio ``r = h / w`` are centred on the origin with
    ``w = a / sqrt(r)``, ``h = a * sqrt(r)``, rounded to integers.

    Args:
        sizes: one anchor size per level (32-512 over P2-P6 for Mask R-CNN).
        aspect_ratios: height / width ratios shared by every level.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self._cache: dict[tuple, list[torch.Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.aspect_ratios)

    def base_anchors(self, size: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``(A, 4)`` xyxy anchors centred on (0, 0) for one size and every ratio."""
        ratios = torch.tensor(self.aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = w_ratios * size
        hs = h_ratios * size
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def forward(
        self, image_shape: Sequence[int], feature_shapes: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ) -> list[torch.Tensor]:
        """Anchors of each level for a padded batch.

        Args:
            image_shape: ``(H, W)`` of the padded batch.
            feature_shapes: ``(h, w)`` of each level.

        Returns:
            One ``(h * w * A, 4)`` tensor per level; the same for every image.
        """
        if len(feature_shapes) != len(self.sizes):
            raise ValueError(
                f"{len(feature_shapes)} feature levels but {len(self.sizes)} anchor sizes; give "
                "one anchor size per pyramid level"
            )
        key = (tuple(image_shape), tuple(tuple(s) for s in feature_shapes), dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        out = []
        for size, (fh, fw) in zip(self.sizes, feature_shapes):
            sy, sx = image_shape[0] // fh, image_shape[1] // fw
            shifts_x = torch.arange(fw, dtype=torch.int32, device=device).to(dtype) * sx
            shifts_y = torch.arange(fh, dtype=torch.int32, device=device).to(dtype) * sy
            yy, xx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (h*w, 1, 4)
            base = self.base_anchors(size, dtype, torch.device(device)).view(1, -1, 4)  # (1, A, 4)
            out.append((shifts + base).reshape(-1, 4))  # (h*w*A, 4)
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = out
        return out
