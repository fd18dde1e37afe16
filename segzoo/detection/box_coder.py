"""Encoding of boxes as (dx, dy, dw, dh) offsets from reference boxes (R-CNN's parametrisation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class BoxCoder:
    """Encode target boxes relative to reference boxes and decode predictions back.

    ``dx = wx * (gx - px) / pw``, ``dw = ww * log(gw / pw)`` and likewise for y and h,
    with ``(px, py, pw, ph)`` the reference box's centre and size. Decoding clamps
    ``dw``/``dh`` at ``log(1000 / 16)`` so that ``exp`` cannot overflow.

    Args:
        weights: ``(wx, wy, ww, wh)``; ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)``
            for the box head.
        clip: upper bound of ``dw`` and ``dh`` before ``exp``.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clip = clip

    def encode(self, targets: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Offsets ``(..., 4)`` that move ``references`` onto ``targets`` (both ``(..., 4)`` xyxy)."""
        wx, wy, ww, wh = self.weights
        pw = references[..., 2] - references[..., 0]
        ph = references[..., 3] - references[..., 1]
        px = references[..., 0] + 0.5 * pw
        py = references[..., 1] + 0.5 * ph
        gw = targets[..., 2] - targets[..., 0]
        gh = targets[..., 3] - targets[..., 1]
        gx = targets[..., 0] + 0.5 * gw
        gy = targets[..., 1] + 0.5 * gh
        return torch.stack([
            wx * (gx - px) / pw, wy * (gy - py) / ph,
            ww * torch.log(gw / pw), wh * torch.log(gh / ph),
        ], dim=-1)

    def decode(self, deltas: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Boxes ``(..., 4)`` xyxy from offsets ``(..., 4)`` and references broadcastable to them."""
        references = references.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        pw = references[..., 2] - references[..., 0]
        ph = references[..., 3] - references[..., 1]
        px = references[..., 0] + 0.5 * pw
        py = references[..., 1] + 0.5 * ph
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.clip)
        dh = (deltas[..., 3] / wh).clamp(max=self.clip)
        cx = dx * pw + px
        cy = dy * ph + py
        half_w = 0.5 * (torch.exp(dw) * pw)
        half_h = 0.5 * (torch.exp(dh) * ph)
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
