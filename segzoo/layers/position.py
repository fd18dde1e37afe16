"""Sine position embedding of a feature map (DETR, Carion et al. 2020; normalised form)."""

from __future__ import annotations

import math

import torch


def sine_position_embedding(h: int, w: int, num_feats: int, device: torch.device | None = None,
                            dtype: torch.dtype = torch.float32, temperature: float = 10000.0) -> torch.Tensor:
    """``1 x 2 num_feats x h x w``: the y embedding then the x embedding, each ``num_feats``
    channels of interleaved ``sin, cos`` of ``2 pi * (index + 1) / (size + 1e-6)`` over
    geometric frequencies ``temperature ** (2 floor(i / 2) / num_feats)``."""
    y = torch.arange(1, h + 1, device=device, dtype=dtype)
    x = torch.arange(1, w + 1, device=device, dtype=dtype)
    y = y / (h + 1e-6) * (2 * math.pi)
    x = x / (w + 1e-6) * (2 * math.pi)
    i = torch.arange(num_feats, device=device, dtype=torch.int64).to(dtype)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)

    def embed(t: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, num_feats)
        a = t[:, None] / freq
        return torch.stack([a[:, 0::2].sin(), a[:, 1::2].cos()], dim=2).flatten(1)

    ey = embed(y)[:, None, :].expand(h, w, num_feats)
    ex = embed(x)[None, :, :].expand(h, w, num_feats)
    return torch.cat([ey, ex], dim=2).permute(2, 0, 1)[None]
